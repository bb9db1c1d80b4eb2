"""Is the vLLM server serving the student? Checked when the trainer connects, before any weight sync.

A server started with another model than the student answers the first requests, then fails the first weight sync
(the student's tensors do not fit its layers), which reads as a server that "stopped answering" and can leave it
unusable. vLLM's OpenAI server (what `gad-trl vllm-serve` / `trl vllm-serve` run) says what it serves in
`GET /v1/models`: `id` (the `--served-model-name`, default the `--model` argument) and `root` (the `--model` argument:
a Hub id or a path on the server's machine). From that:

1. The same model as the student (same Hub id, or the same folder): fine.
2. Otherwise, when the served model's config can be read here (a folder on this machine, or a Hub id in the local
   cache; nothing is downloaded), its architecture (model type, vocabulary, widths, depth, heads, tied embeddings) is
   compared with the student's: any difference is a mismatch. The same architecture under another name (e.g. the
   base model served, a fine-tuned student) is fine: the first weight sync, before the first generation, replaces the
   served weights by the student's. A warning says so.
3. Otherwise (a path only the server's machine has), the server's tokenizer (`POST /tokenize`) is compared with the
   student's on a probe text: other token ids mean another model family. Same ids: a warning that the architecture
   could not be checked.

`check_served_model` returns `None` (fine) or the reason for refusing to train; the caller raises it.
"""

from __future__ import annotations

import logging
import os
import re

from ..redact import redact_string

logger = logging.getLogger(__name__)

# Config fields that fix the shapes of the weights a weight sync sends (checked on the text config).
ARCHITECTURE_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "head_dim", "tie_word_embeddings",
)  # fmt: skip
TOKENIZER_PROBE = "GAD served-model check: The quick brown fox jumps over 13 lazy dogs. ¿Qué tal? 你好, мир!"
_HF_CACHE_DIR = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")


def served_model_info(session, base_url: str, timeout: float | None = 30.0) -> dict:
    """`{"id", "root", "max_model_len"}` of the server's base model (not a LoRA adapter) from `GET /v1/models`."""
    response = session.get(f"{base_url.rstrip('/')}/v1/models", timeout=timeout)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        return {"id": None, "root": None, "max_model_len": None}
    base = next((m for m in models if not m.get("parent")), models[0])
    return {"id": base.get("id"), "root": base.get("root") or base.get("id"),
            "max_model_len": base.get("max_model_len")}


def _hub_id_of(name: str) -> str | None:
    """`org/name` for a Hub id or a folder of the Hub cache (`.../models--org--name/snapshots/<rev>`), else None."""
    match = _HF_CACHE_DIR.search(name.replace(os.sep, "/"))
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    if not os.path.isabs(name) and name.count("/") == 1 and not os.path.exists(name):
        return name
    return None


def same_model_source(served: str | None, student: str | None) -> bool:
    """Whether two `--model` / `name_or_path` values name the same model: equal, the same folder, or the same Hub id
    (as an id or as its folder in the Hub cache)."""
    if not served or not student:
        return False
    a, b = str(served).rstrip("/"), str(student).rstrip("/")
    if a == b:
        return True
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False
    hub_a, hub_b = _hub_id_of(a), _hub_id_of(b)
    return hub_a is not None and hub_a == hub_b


def load_served_config(name: str | None):
    """The served model's `PretrainedConfig` when it can be read here without downloading anything, else None."""
    if not name:
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a folder of the server's machine, a model not cached here, remote code
        logger.debug("Could not read the config of %s here: %s", name, err)
        return None


def architecture(config) -> dict:
    """The ARCHITECTURE_FIELDS of `config`'s text config (None where a field is not set)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    out = {}
    for field in ARCHITECTURE_FIELDS:
        value = getattr(text, field, None)
        if value is None and field == "tie_word_embeddings":
            value = getattr(config, field, None)
        out[field] = value
    return out


def architecture_differences(served: dict, student: dict) -> list[str]:
    """`field: <served> (server) vs <student> (student)` for each field both set, with different values."""
    return [
        f"{field}: {served[field]!r} (server) vs {student[field]!r} (student)"
        for field in ARCHITECTURE_FIELDS
        if served.get(field) is not None and student.get(field) is not None and served[field] != student[field]
    ]


def server_token_ids(session, base_url: str, model_id: str | None, text: str, timeout: float | None = 30.0):
    """The server's token ids for `text` (`POST /tokenize`, no special tokens), or None when it can't say."""
    payload = {"prompt": text, "add_special_tokens": False}
    if model_id:
        payload["model"] = model_id
    try:
        response = session.post(f"{base_url.rstrip('/')}/tokenize", json=payload, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - an optional check: the caller warns
        logger.debug("POST /tokenize failed: %s", err)
        return None
    if response.status_code != 200:
        return None
    tokens = response.json().get("tokens")
    return list(tokens) if isinstance(tokens, list) else None


def _student_config(model):
    for obj in (model, getattr(model, "module", None)):
        config = getattr(obj, "config", None)
        if config is not None:
            return config
    return None


def check_served_model(session, base_url: str, student, student_name: str, tokenizer=None, start_command: str = "",
                       timeout: float | None = 30.0, base_is_kept: bool = False) -> str | None:
    """None when the server at `base_url` serves `student` (or the same architecture, with a warning); otherwise the
    error message: what the server serves, what the student is, how they differ and how to start the right server.
    `base_is_kept` (adapter-only sync): the served weights are never replaced, so only the student's own base model
    passes. Network errors of `GET /v1/models` propagate (the caller reports a dead server)."""
    info = served_model_info(session, base_url, timeout)
    shown = redact_string(base_url)  # the URL as messages show it: no password or token
    served = info["root"]
    if served is None:
        logger.warning("The vLLM server at %s lists no model in /v1/models: the served model is not checked.", shown)
        return None
    if same_model_source(served, student_name):
        return None
    served_desc = repr(served) if info["id"] in (None, served) else f"{served!r} (as {info['id']!r})"
    fix = (
        f"Start the server with the student's model (the same --model as the trainer's model), e.g.:\n\n"
        f"    {start_command}\n\n"
        "or point vllm_server_base_url (vllm_server_host/vllm_server_port) at a server that serves it."
    )
    if base_is_kept:
        return (
            f"The vLLM server at {shown} serves {served_desc}, and the student's LoRA adapter is trained on "
            f"{student_name!r}. With vllm_weight_sync='lora' only the adapter is sent and the served base is never "
            f"replaced, so the server must serve the student's own base model (the same --model path or id as the "
            f"trainer's model_name_or_path). {fix}"
        )
    student_config = _student_config(student)
    served_config = load_served_config(served)
    if served_config is not None and student_config is not None:
        differences = architecture_differences(architecture(served_config), architecture(student_config))
        if differences:
            return (
                f"The vLLM server at {shown} serves {served_desc}, another model than the student "
                f"{student_name!r}: {'; '.join(differences)}. The student's weights can't be loaded into it (the "
                f"first weight sync would fail and could leave the server unusable). {fix}"
            )
        logger.warning(
            "The vLLM server at %s serves %s and the student is %r: the same architecture, so the first weight sync "
            "(before the first generation) replaces the served weights by the student's.", shown, served_desc,
            student_name,
        )
        return None
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    if tok is not None and hasattr(tok, "encode"):
        served_ids = server_token_ids(session, base_url, info["id"], TOKENIZER_PROBE, timeout)
        student_ids = list(tok.encode(TOKENIZER_PROBE, add_special_tokens=False))
        if served_ids is not None and served_ids != student_ids:
            return (
                f"The vLLM server at {shown} serves {served_desc}, another model than the student "
                f"{student_name!r}: their tokenizers differ (the probe text {TOKENIZER_PROBE!r} is tokens "
                f"{served_ids[:12]}... on the server, {student_ids[:12]}... for the student). {fix}"
            )
        checked = "the same tokenizer" if served_ids is not None else "its tokenizer could not be compared either"
    else:
        checked = "no tokenizer to compare"
    logger.warning(
        "The vLLM server at %s serves %s and the student is %r; its config can't be read on this machine to compare "
        "architectures (%s). If it is another model, the first weight sync will fail: start the server with the "
        "student's model (%s).", shown, served_desc, student_name, checked, start_command,
    )
    return None
