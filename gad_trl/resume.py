"""Resuming: `--resume_from_checkpoint` with no value (= the latest checkpoint), and only *complete* checkpoints.

`Trainer` writes a checkpoint folder piece by piece and `trainer_state.json` last, so a run killed during a save
(SIGKILL, out of memory, pre-emption) leaves a `checkpoint-N` without it. transformers' `get_last_checkpoint` only
reads folder names and would pick that folder, then crash on it; here the newest folder with a readable
`trainer_state.json` is taken and each skipped one is named.

A save that fills the disk: `explain_disk_full(path)` around it turns the writers' various errors (OSError ENOSPC or
EDQUOT, safetensors' "os error 28", torch.save's errno-less "unexpected pos") into a `DiskFullError` that says "no
space left on device", names the file being written and the space left, and says what to do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from contextlib import contextmanager

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


__all__ = ["DiskFullError", "explain_disk_full", "latest_complete_checkpoint", "resolve_resume_checkpoint",
           "with_resume_flag_value"]


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


# ---------------------------------------------------------------------------------------------- a disk full on a save
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the writers say it without an errno: safetensors ("No space left on device (os error 28)"), Rust's StorageFull /
# FilesystemQuotaExceeded, huggingface_hub's messages.
_DISK_FULL_TEXT = re.compile(
    r"no space left on device|disk quota exceeded|storagefull|filesystemquotaexceeded|os error (28|122)\b", re.I
)
# torch.save's zip writer reports a failed write with no errno ("unexpected pos 576 vs 534", "file write failed"): a
# disk full when the file system it wrote to is (nearly) full.
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|file write failed|PytorchStreamWriter failed", re.I)
LOW_SPACE_BYTES = 256 * 2**20

DEFAULT_DISK_FULL_HINT = (
    "Free space there, keep fewer checkpoints (save_total_limit=N keeps the newest N; save_only_model=True skips the "
    "optimizer states), or use an output_dir on a larger disk. A checkpoint cut by this error has no "
    f"{TRAINER_STATE_NAME}: --resume_from_checkpoint skips it and resumes from the last complete one."
)


class DiskFullError(OSError):
    """A save ran out of disk space (ENOSPC) or quota (EDQUOT); `filename` is the file (or folder) being written and
    `__cause__` the writer's own error."""

    def __init__(self, code: int, message: str, filename: str):
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _free_bytes(path: str) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(_existing_ancestor(path)).free
    except OSError:
        return None


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def disk_full_errno(err: BaseException, path: str | None = None) -> int | None:
    """ENOSPC / EDQUOT when `err` (or an error it was raised from) says the disk or the quota is full, else None.
    torch.save's errno-less write failure counts when `path`'s file system has under LOW_SPACE_BYTES left."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e.errno
        match = _DISK_FULL_TEXT.search(str(e))
        if match:
            text = match.group(0).lower()
            return errno.EDQUOT if ("quota" in text or "122" in text) else errno.ENOSPC
    if path is not None and any(_TORCH_WRITE_FAILED.search(str(e)) for e in _chain(err)):
        free = _free_bytes(path)
        if free is not None and free < LOW_SPACE_BYTES:
            return errno.ENOSPC
    return None


def _file_written(err: BaseException, path: str) -> str:
    """What was being written: the file the error names, else (`path` a folder) the newest file in it - the writer
    stopped in the middle of it - or the newest folder when that changed last (a writer that removed its partial
    file)."""
    for e in _chain(err):
        name = getattr(e, "filename", None)
        if isinstance(name, (str, os.PathLike)) and name:
            return os.fspath(name)
    if not os.path.isdir(path):
        return path
    newest, newest_time = path, -1
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            full = os.path.join(root, name)
            try:
                mtime = os.stat(full).st_mtime_ns
            except OSError:
                continue
            if mtime > newest_time or (mtime == newest_time and name in files):
                newest, newest_time = full, mtime
    return newest


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def explain_disk_full(path: str | os.PathLike, hint: str | None = None):
    """Re-raise a disk-full (or quota) failure of the writes done inside as a `DiskFullError` whose message says "no
    space left on device", names the file being written (`path` is that file, or the folder being written into),
    the space left and what to do (`hint`; default: checkpoint advice), chained from the writer's error. Any other
    error passes through unchanged, and so does a `DiskFullError` from an inner `explain_disk_full`."""
    path = os.fspath(path)
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        code = disk_full_errno(err, path)
        if code is None:
            raise
        target = _file_written(err, path)
        free = _free_bytes(target)
        where = f"{_size(free)} free" if free is not None else "free space unknown"
        if code == errno.EDQUOT:
            what, where = "No space left on device (disk quota exceeded: your quota is used up", f"{where} on the disk)"
        else:
            what, where = "No space left on device", f"{where} on that file system)"
        into = "into " if os.path.isdir(target) else ""
        message = (
            f"{what} while writing {into}{target} ({where}. The writer said: {type(err).__name__}: {str(err)[:300]}. "
            f"{hint or DEFAULT_DISK_FULL_HINT}"
        )
        raise DiskFullError(code, message, target) from err
