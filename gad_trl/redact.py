"""Keep secrets out of everything a run writes about its configuration: model cards, TensorBoard/trackio hparams,
`training_args.bin`, printed configs.

A secret can sit at any depth (`discriminator_init_kwargs: {token: ...}`, `model_init_kwargs`, a password in
`vllm_server_base_url`), so `redact` walks dicts, lists and strings: values under secret-looking keys are replaced,
credentials inside URLs are masked, and anything shaped like a Hugging Face token is masked wherever it appears.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"

# Key names (lower-cased) whose value is a secret: `hub_token`, `token`, `api_key`, `aws_secret`, `db_password`, ...
_SECRET_KEY = re.compile(
    r"(^|_)(token|api_?key|secret|password|passwd|credentials?|private_key|access_key|authorization|auth)$"
)
# Tokenizer special-token names end with "token" too; they are vocabulary, not credentials.
_NOT_SECRET_KEYS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# scheme://user:password@host -> scheme://user:<redacted>@host ; scheme://token@host -> scheme://<redacted>@host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::(?P<pw>[^/@\s]*))?@")
# ?token=... / &api_key=... in URLs
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:[a-z_]*token|api_?key|key|secret|password|sig|signature)=)[^&#\s]+", re.I)
# Hugging Face user access tokens, wherever they appear
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
# An Authorization header echoed back by an endpoint ("Bearer sk-...", "Basic ...").
_AUTH_HEADER = re.compile(r"(?P<scheme>\b(?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)


def is_secret_key(key: Any) -> bool:
    name = str(key).lower()
    return name not in _NOT_SECRET_KEYS and _SECRET_KEY.search(name) is not None


def redact_string(text: str) -> str:
    """`text` with URL credentials, secret query parameters, Authorization header values and Hugging Face tokens
    masked."""

    def url(match: re.Match) -> str:
        if match.group("pw") is None:  # a bare userinfo (https://<token>@host) is the credential itself
            return f"{match.group('scheme')}{REDACTED}@" if match.group("user") else match.group(0)
        return f"{match.group('scheme')}{match.group('user')}:{REDACTED}@"

    text = _URL_CREDENTIALS.sub(url, text)
    text = _QUERY_SECRET.sub(lambda m: m.group("key") + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group("scheme") + REDACTED, text)
    return _HF_TOKEN.sub(REDACTED, text)


def redact_values(text: str, secrets) -> str:
    """`redact_string(text)`, with every exact occurrence of the given secret values (e.g. an API key an endpoint
    echoed in its error body) masked too."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return redact_string(text)


_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIX = re.compile(r"^(sk|pk|rk|hf|gsk|xai|key)[-_]", re.I)


def check_api_key_env(name: str | None, option: str) -> None:
    """`name` (an `*api_key_env` setting) must name an environment variable. A key passed there by mistake (`sk-...`)
    is refused before anything logs or saves it, with a message that does not repeat it."""
    if name is None:
        return
    looks_like_key = _KEY_PREFIX.match(name) or (
        len(name) >= 32 and any(c.isdigit() for c in name) and any(c.islower() for c in name)
        and any(c.isupper() for c in name))
    if not _ENV_VAR_NAME.fullmatch(name) or looks_like_key:
        what = "looks like an API key itself" if looks_like_key else "is not an environment variable name"
        raise ValueError(
            f"{option} takes the NAME of the environment variable that holds the key, and the value given {what} "
            f"(not shown here). Put the key in a variable (export MY_API_KEY=...) and pass `{option} MY_API_KEY`; "
            "if that value was a real key, consider it exposed in your shell history and rotate it."
        )


def redacted_exception(err: BaseException, _depth: int = 0) -> BaseException:
    """`err` itself when no message in its chain (`__cause__`, `__context__`) holds a secret, else a copy of the
    chain with the messages redacted, the same types and tracebacks: what `raise ... from` gets when the error it
    wraps (e.g. TRL's "can't be reached at http://user:<password>@host") would print a secret in the traceback."""
    if err is None or _depth > 8:
        return err
    cause = redacted_exception(err.__cause__, _depth + 1)
    context = redacted_exception(err.__context__, _depth + 1)
    text = str(err)
    clean = redact_string(text)
    if clean == text and cause is err.__cause__ and context is err.__context__:
        return err
    try:
        copy = type(err)(clean)
    except Exception:  # noqa: BLE001 - an exception class with another signature
        copy = RuntimeError(f"{type(err).__name__}: {clean}")
    copy.__traceback__ = err.__traceback__
    copy.__cause__, copy.__context__, copy.__suppress_context__ = cause, context, err.__suppress_context__
    return copy


def redact(value: Any) -> Any:
    """A copy of `value` (dicts, lists, tuples and strings, at any depth) with every secret replaced by `<redacted>`.

    Values under secret-looking keys are replaced unless they are `None` or a bool (`use_auth_token: true` is not a
    secret); other values keep their type."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v is not None and not isinstance(v, bool) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    if isinstance(value, str):
        return redact_string(value)
    return value


def public_dataset_name(name: str | None) -> str | None:
    """The data set's name as a card may publish it: a Hub id or a relative path unchanged, an absolute local path
    (or `~/...`) reduced to `.../<last component>` (the full path tells readers nothing and exposes the author's file
    system; the leading `...` keeps it from being read, or linked, as a Hub id)."""
    if not name:
        return name
    expanded = os.path.expanduser(name)
    if os.path.isabs(expanded):
        last = os.path.basename(os.path.normpath(expanded))
        return f".../{last}" if last else name
    return name


def redacting(cls):
    """Class decorator for a `TrainingArguments` dataclass: everything that writes the configuration out gets it
    redacted - TensorBoard/trackio hparams and the `args` text (`to_dict`, `to_json_string`, `to_sanitized_dict`),
    printed configs (`repr`) and `training_args.bin` (pickle). The object itself keeps the real values. Apply it
    above `@dataclass` (which would otherwise write its own `__repr__`)."""
    from dataclasses import fields

    base_to_dict = cls.to_dict

    def to_dict(self):
        return redact(base_to_dict(self))

    def __repr__(self):
        values = redact({f.name: getattr(self, f.name) for f in fields(self) if f.repr})
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(values.items()))})"

    def __getstate__(self):
        return redact(dict(self.__dict__))

    cls.to_dict, cls.__repr__, cls.__str__, cls.__getstate__ = to_dict, __repr__, __repr__, __getstate__
    return cls


__all__ = ["REDACTED", "check_api_key_env", "is_secret_key", "public_dataset_name", "redact", "redact_string",
           "redacted_exception", "redacting"]
