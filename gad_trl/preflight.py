"""Checks on a run's inputs that must fail before anything heavy loads, with an error naming the fix."""

from __future__ import annotations

import os


def looks_like_local_path(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything absolute, relative (`./`, `../`, `~`) or with more slashes is
    meant as a folder on this machine."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_source(name, what: str = "model_name_or_path") -> None:
    """A missing local model folder is reported as such, not as transformers' Hub-id validation error."""
    if not isinstance(name, (str, os.PathLike)):
        return
    name = os.fspath(name)
    expanded = os.path.expanduser(name)
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
