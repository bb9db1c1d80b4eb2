"""Resuming: `--resume_from_checkpoint` with no value (= the latest checkpoint), and only *complete* checkpoints.

`Trainer` writes a checkpoint folder piece by piece and `trainer_state.json` last, so a run killed during a save
(SIGKILL, out of memory, pre-emption) leaves a `checkpoint-N` without it. transformers' `get_last_checkpoint` only
reads folder names and would pick that folder, then crash on it; here the newest folder with a readable
`trainer_state.json` is taken and each skipped one is named.
"""

from __future__ import annotations

import json
import logging
import os
import re

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # transformers' name; written last by Trainer._save_checkpoint
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_TRUE = {"true", "yes", "1", "latest", "last"}
_FALSE = {"false", "no", "0", "none", ""}
RESUME_FLAG = "--resume_from_checkpoint"


def with_resume_flag_value(argv: list[str]) -> list[str]:
    """`argv` where a bare `--resume_from_checkpoint` (last, or followed by another flag) reads
    `--resume_from_checkpoint true`: the documented "resume from the latest checkpoint" form."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == RESUME_FLAG and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out.insert(i + 1, "true")
            break
    return out


def incomplete_reason(path: str) -> str | None:
    """Why `path` is not a complete checkpoint, or None when it is."""
    state = os.path.join(path, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        return f"no {TRAINER_STATE_NAME} (interrupted while saving?)"
    try:
        with open(state) as f:
            json.load(f)
    except (OSError, ValueError) as err:
        return f"unreadable {TRAINER_STATE_NAME} ({err})"
    return None


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that is complete; warns about each newer one that is not."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(
        ((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))),
        reverse=True,
    )
    for _, name in found:
        path = os.path.join(output_dir, name)
        if not os.path.isdir(path):
            continue
        reason = incomplete_reason(path)
        if reason is None:
            return path
        logger.warning(f"Skipping incomplete checkpoint {path}: {reason}.")
    return None


def resolve_resume_checkpoint(value, output_dir: str) -> str | None:
    """The checkpoint folder to resume from, for `resume_from_checkpoint` given as a bool, a string or a path.

    True / "true" / "latest" -> the latest complete checkpoint in `output_dir` (error if there is none); False / None
    / "false" -> None (a new run); a path -> that folder, which must be a complete checkpoint."""
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
        path = latest_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(
                f"resume_from_checkpoint asks for the latest checkpoint, but {output_dir} holds no complete "
                f"{PREFIX_CHECKPOINT_DIR}-N folder. Start without resume_from_checkpoint, or point it at a checkpoint."
            )
        return path
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return None
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"resume_from_checkpoint={path!r} is not a folder.")
    reason = incomplete_reason(path)
    if reason is not None:
        latest = latest_complete_checkpoint(os.path.dirname(os.path.abspath(path)))
        hint = f" The latest complete one next to it is {latest}." if latest else ""
        raise ValueError(f"{path} is not a complete checkpoint: {reason}.{hint}")
    return path


__all__ = ["latest_complete_checkpoint", "resolve_resume_checkpoint", "with_resume_flag_value"]


class EpochReplaySampler:
    """TRL's `RepeatSampler`, resumable in any epoch.

    It draws each epoch's prompt order from one generator seeded once, so epoch k's order is the (k+1)-th draw of this
    process; transformers no longer iterates the earlier epochs when it resumes, so a run resumed in epoch k >= 1
    drew epoch 0's order again and trained on other prompts than the uninterrupted run. `set_epoch(k)` (called before
    every epoch) re-seeds the generator and replays the k earlier draws: the uninterrupted run's orders, unchanged.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        import torch

        sampler = self.sampler
        if not sampler.shuffle or sampler.seed is None:
            return  # no order to replay (unshuffled), or none that a resumed run could rebuild (unseeded)
        sampler.generator.manual_seed(sampler.seed)
        for _ in range(epoch):
            torch.randperm(sampler.num_samples, generator=sampler.generator)  # as RepeatSampler.__iter__ draws


def load_checkpoint_file(path: str, map_location=None):
    """A `torch.save`d state (optimizer, schedule, replay buffer) read as data only: tensors, numbers, strings and
    containers. `weights_only=True` refuses any other pickled object, which could run code on loading, so a crafted
    or foreign file in a checkpoint folder stops the run here, named, instead of executing."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors, numbers and containers, so it is not loaded (unpickling it "
            "could run arbitrary code). GADTrainer never writes such a file: if this checkpoint comes from elsewhere, "
            f"delete the file (its state then restarts) or resume from a checkpoint you wrote. Detail: {err}"
        ) from err
