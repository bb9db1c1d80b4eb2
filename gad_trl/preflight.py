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
