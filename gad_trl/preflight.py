"""Checks on a run's inputs that must fail before anything heavy loads, with an error naming the fix."""

from __future__ import annotations

import importlib
import os
import sys


def looks_like_local_path(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything absolute, relative (`./`, `../`, `~`) or with more slashes is
    meant as a folder on this machine."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def missing_local_path_message(name: str, what: str) -> str:
    """"The local <what> <name> does not exist", with the nearest existing folder and the closest names in it (a
    typo's likely fix)."""
    import difflib
    from pathlib import Path

    path = Path(os.path.expanduser(name))
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    message = f"The local {what} {name!r} does not exist (working directory: {os.getcwd()})."
    if parent.is_dir():
        entries = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
        first = path.relative_to(parent).parts[0] if path != parent else path.name
        close = difflib.get_close_matches(first, entries, n=3)
        if close:
            message += f" Did you mean {', '.join(repr(str(parent / c)) for c in close)}?"
    return message + " Pass an existing directory or file, or a Hub id of the form 'org/name'."


def prompt_token_limit(model, args) -> tuple[int | None, str]:
    """The longest prompt a run can take: the student's context (`max_position_embeddings`, and
    `vllm_max_model_length` when vLLM is colocated) minus `max_completion_length`, and where that comes from. transformers
    trains silently past the position embeddings and vLLM rejects the request only at the step that draws the row, so
    the data are checked against it when the trainer is built. (None, "") when the config names no context."""
    config = getattr(model, "config", None)
    if config is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model, trust_remote_code=getattr(args, "trust_remote_code", False))
        except Exception:  # noqa: BLE001 - the model load reports an unreadable config with its own error
            return None, ""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    contexts = {}
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            contexts[f"the student's {name}={value}"] = value
            break
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "colocate":
        value = getattr(args, "vllm_max_model_length", None)
        if value:
            contexts[f"vllm_max_model_length={value}"] = value
    if not contexts:
        return None, ""
    source, context = min(contexts.items(), key=lambda kv: kv[1])
    completion = args.max_completion_length or 0
    if completion >= context:
        raise ValueError(
            f"max_completion_length={completion} leaves no room for a prompt in {source}: lower max_completion_length "
            "(gad-trl analyze-lengths suggests one)."
        )
    return context - completion, f"{source} minus max_completion_length={completion}"


def check_model_source(name, what: str = "model_name_or_path") -> None:
    """A missing local model folder is reported as such, not as transformers' Hub-id validation error."""
    if not isinstance(name, (str, os.PathLike)):
        return
    name = os.fspath(name)
    expanded = os.path.expanduser(name)
    if name.lower().endswith(".gguf"):
        # transformers needs the folder plus gguf_file and returns a model that cannot be saved: convert once instead.
        raise ValueError(
            f"{what}={name!r} is a GGUF file; convert it once into a Hugging Face folder and pass that folder: "
            f"`gad-trl convert {name} models/<name>` (needs `pip install gguf`)."
        )
    if not os.path.exists(expanded) and looks_like_local_path(name):
        raise FileNotFoundError(
            f"{what}={name!r} looks like a local folder but does not exist (working directory: {os.getcwd()}). "
            "Check the path, or create it first (e.g. `gad-trl make-tiny outputs/tiny` for the tiny recipe)."
        )


def check_reference_model_source(model, beta: float, peft_config=None) -> None:
    """`beta > 0` needs a reference model, which `GRPOTrainer` rebuilds from the student's `config._name_or_path`. A
    model instance built in memory has none, and TRL then fails deep inside the Hub client ("Repo id must use
    alphanumeric chars ... ''"): say what is wrong and the two ways out. (A PEFT student needs no copy: TRL disables
    its adapter instead.)"""
    if isinstance(model, (str, os.PathLike)) or not beta or peft_config is not None:
        return
    if hasattr(model, "peft_config"):  # already a PEFT model
        return
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not source:
        raise ValueError(
            f"beta={beta:g} (GADConfig's default: the paper's KL penalty) needs a reference model, which GRPOTrainer "
            "builds by reloading the student from `model.config._name_or_path`; this model instance has none (it was "
            "built in memory, not loaded from a folder or the Hub). Either save it and pass the folder "
            "(`model.save_pretrained(path)`, then `GADTrainer(path, ...)`), or set `beta=0.0` in GADConfig (no KL "
            "penalty, no reference model)."
        )


# Callables named by an import path in a recipe or on the command line (`reward_funcs`, `tools`): resolved before any
# model loads, so a typo fails at once.


class ImportPathError(ValueError):
    """An import path that does not name a usable callable."""


def import_callable(spec: str, option: str):
    """The callable `spec` names: `module:attr` (attr may be dotted) or `module.attr`."""
    if not isinstance(spec, str):
        raise ImportPathError(f"{option}: {spec!r} is not an import path string (module:function).")
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise ImportPathError(f"{option}: {spec!r} is not an import path; write module:function or module.function "
                              "(e.g. my_tools:search).")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportPathError(f"{option}: cannot import module {module_name!r} for {spec!r} ({err}). Run from the "
                              "directory that holds it, or install it.") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"{option}: module {module_name!r} has no attribute {attr!r} (from {spec!r}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportPathError(f"{option}: {attr!r} in {module_name!r} is a {type(obj).__name__}, not a function "
                              f"(from {spec!r}).")
    return obj
