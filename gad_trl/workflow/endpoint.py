"""The arguments of an OpenAI-compatible endpoint, declared once for every config that talks to one.

The teacher (`gad-trl generate-teacher`), the student and the judge (`gad-trl evaluate`, `JudgeEvalCallback`) and
SODA's sampler of the starting student (`SODAConfig.rejected_*`) each reach a server through the same five settings:
base URL, the environment variable holding the key, the per-attempt timeout, the retries and a JSON extra body. Each
config declares its own flags (`--base_url`, `--judge_base_url`, `rejected_base_url`, ...) with the field factories
below, so the help text is written here once, and checks them with `Endpoint.check`, so a bad value gets the same
error wherever it is given. `Endpoint.client()` makes the `openai` client (`openai_chat.make_client`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

REQUEST_TIMEOUT_HELP = (
    "Total seconds one request attempt may take (connecting, sending, waiting for and reading the whole answer, "
    "however slowly the server sends it); an attempt over it is abandoned, its connection closed, and retried like "
    "other timeouts (see the retries setting)."
)
MAX_RETRIES_HELP = (
    "Retries per request: 429 (honouring Retry-After), 5xx, timeouts, dropped connections and malformed answers; then "
    "the request is listed as failed."
)


def base_url_field(what: str, default: str | None = None, note: str = ""):
    """The endpoint's URL, e.g. `base_url: str = base_url_field("the teacher", "http://127.0.0.1:8000/v1")`."""
    return field(default=default, metadata={"help": (
        f"OpenAI-compatible endpoint of {what}, a URL ending in /v1 (OpenAI: https://api.openai.com/v1; a vLLM "
        f"server: http://HOST:PORT/v1).{' ' + note if note else ''}")})


def api_key_env_field(what: str, default: str | None = "OPENAI_API_KEY"):
    unset = "Unset in the environment: no key is sent." if default else "None: no key is sent (a local vLLM server)."
    return field(default=default, metadata={"help": (
        f"Name of the environment variable holding the API key of {what} (the key itself is never logged or saved). "
        f"{unset}")})


def request_timeout_field(default: float = 600.0):
    return field(default=default, metadata={"help": REQUEST_TIMEOUT_HELP})


def max_retries_field(default: int = 5):
    return field(default=default, metadata={"help": MAX_RETRIES_HELP})


def extra_body_field(what: str, example: str = "vLLM's '{\"top_k\": 20}'"):
    return field(default=None, metadata={"help": (
        f"JSON object merged into each request body sent to {what} (endpoint-specific options, e.g. {example}).")})


def parse_json_object(text: str | dict | None, name: str) -> dict | None:
    """A JSON object given as text on the command line (or already a dict, from a YAML config), or None; a clear
    error naming the option otherwise."""
    if text is None:
        return None
    if isinstance(text, dict):  # from a YAML config
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}.")
    return value


@dataclass(frozen=True)
class Endpoint:
    """One endpoint's settings, as a config's fields give them; `prefix` is the flag prefix they are named with
    (`--`, `--judge_`, `rejected_`), for the errors; `shared_prefix` that of the timeout and retries when several
    endpoints of a config share them (`gad-trl evaluate`: `--request_timeout`)."""

    base_url: str | None
    api_key_env: str | None = "OPENAI_API_KEY"
    request_timeout: float = 600.0
    max_retries: int = 5
    extra_body: str | None = None
    prefix: str = "--"
    shared_prefix: str | None = None

    def check(self) -> Endpoint:
        """Every setting valid, or a ValueError naming the flag and the fix. Returns itself."""
        from ..redact import check_api_key_env

        p, shared = self.prefix, self.prefix if self.shared_prefix is None else self.shared_prefix
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise ValueError(f"{p}base_url must be an http(s) URL of an OpenAI-compatible server (e.g. "
                             f"http://127.0.0.1:8000/v1), got {self.base_url!r}.")
        check_api_key_env(self.api_key_env, f"{p}api_key_env")
        if not self.request_timeout > 0:
            raise ValueError(f"{shared}request_timeout must be > 0 seconds, got {self.request_timeout}.")
        if self.max_retries < 0:
            raise ValueError(f"{shared}max_retries must be >= 0, got {self.max_retries}.")
        self.extra_body_dict()  # fail early on bad JSON
        return self

    def extra_body_dict(self) -> dict | None:
        return parse_json_object(self.extra_body, f"{self.prefix}extra_body")

    def client(self):
        """The `openai` client of this endpoint (its key read from `api_key_env`, the timeout and retries applied)."""
        from .openai_chat import make_client

        return make_client(self.base_url, self.api_key_env, self.request_timeout, self.max_retries)
