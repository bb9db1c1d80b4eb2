"""A run's output folder: who holds it, which run wrote it, which checkpoints in it are complete, a save that fills
its disk, and resuming from it exactly. One home for what protects `output_dir` during and across runs:

- the lock (`OutputDirLock`, `hold_output_dir`): two runs in one folder would overwrite each other's checkpoints;
- `check_output_dir_writable`: fail at the start, not at the first save hours later;
- the run key (`run_key`, `check_run_key`, written as `gad_run.json` in each checkpoint): a checkpoint resumes only
  the run that wrote it;
- complete checkpoints (`latest_complete_checkpoint`, `resolve_resume_checkpoint`): `Trainer` writes a checkpoint
  folder piece by piece and `trainer_state.json` last, so a run killed during a save (SIGKILL, out of memory,
  pre-emption) leaves a `checkpoint-N` without it. transformers' `get_last_checkpoint` only reads folder names and
  would pick that folder, then crash on it; here the newest folder with a readable `trainer_state.json` is taken and
  each skipped one is named;
- a disk that fills up (`explain_disk_full`): the writers' various errors (OSError ENOSPC or EDQUOT, safetensors'
  "os error 28", torch.save's errno-less "unexpected pos") become a `DiskFullError` that says "no space left on
  device", names the file being written and the space left, and says what to do;
- resuming exactly: the bare `--resume_from_checkpoint` flag (= the latest complete checkpoint), the prompt order
  across epochs (`EpochReplaySampler`), saved states read as data only (`load_checkpoint_file`).
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


# ---------------------------------------------------------------------------------------------- the lock
LOCK_NAME = ".gad_trl.lock"
RUN_KEY_NAME = "gad_run.json"  # in each checkpoint: which run wrote it (model, data, max_steps)


class OutputDirLock:
    """An exclusive lock on `output_dir` for the length of a run, so two runs never overwrite each other's
    checkpoints. `fcntl.flock` is released by the kernel when the holder exits, however it exits, so a lock left by a
    killed run is never stale; the file names the holder for the error message.

    The lock is the file *and* the flock on it: a file deleted (or replaced) while the run holds it lets a second run
    lock a new file. `verify()` (called at each log and save, `callbacks.OutputDirLockCallback`) notices: a deleted
    file is re-created and locked again, a file now locked by another run is reported (`conflict`). `release()` never
    raises: it runs before the final save."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self._file = None
        self._identity = None  # (st_dev, st_ino) of the file this process locked
        self.conflict: str | None = None  # the other holder, once verify() found one

    def _open(self):
        """The lock file opened for writing without following a symlink (a link planted at this path would make the
        run write to its target) and only if it is a regular file."""
        import stat

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RuntimeError(
                    f"{self.path} is a symbolic link; the output-dir lock never follows links (the run would write to "
                    "the link's target). Delete the link (it is not a lock any run holds) and start again."
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RuntimeError(f"{self.path} is not a regular file, so it cannot be the output-dir lock. Delete it and "
                               "start again.")
        return os.fdopen(fd, "r+")

    def _lock(self, handle) -> str | None:
        """Take the flock of `handle`: None, or the holder its file names when another process has it."""
        import fcntl

        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        return None

    def _hold(self, handle) -> None:
        import socket

        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        st = os.fstat(handle.fileno())
        self._file, self._identity = handle, (st.st_dev, st.st_ino)
        _HELD[_lock_key(os.path.dirname(self.path))] = self

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        handle = self._open()
        holder = self._lock(handle)
        if holder is not None:
            handle.close()
            raise RuntimeError(
                f"{os.path.dirname(self.path)} is in use by another run ({holder}): two runs in one output_dir would "
                "overwrite each other's checkpoints. Wait for it to finish, stop it, or use another output_dir."
            ) from None
        self._hold(handle)

    def _still_ours(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def verify(self) -> str | None:
        """None while this run holds the lock. A lock file deleted or replaced under the run is locked again (with a
        warning); when another run holds the new one, its name (also kept in `conflict`) and an error is logged."""
        import logging

        if self._file is None or self._still_ours():
            return self.conflict
        log = logging.getLogger(__name__)
        output_dir = os.path.dirname(self.path)
        try:
            handle = self._open()
        except (OSError, RuntimeError) as err:
            self.conflict = self.conflict or f"unknown ({err})"
            log.error(f"The lock file {self.path} of this run was replaced and cannot be re-taken ({err}): another run "
                      f"may write into {output_dir}. Check that no other run uses it; this run carries on and saves.")
            return self.conflict
        holder = self._lock(handle)
        if holder is None:
            self._file.close()  # the old, unlinked file: its flock protects nothing any more
            self._hold(handle)
            log.warning(f"The lock file {self.path} was deleted while this run held it: it is re-created and locked "
                        f"again. While it was missing another run could have started in {output_dir}: check that none "
                        "is writing there. Don't delete .gad_trl.lock of a running run (it is removed when the run "
                        "ends).")
            return self.conflict
        handle.close()
        self.conflict = holder
        log.error(f"ANOTHER RUN ({holder}) now holds the lock of {output_dir}: the lock file of this run "
                  f"(pid {os.getpid()}) was deleted and the other run started in the same output_dir. Both write "
                  "checkpoints there and overwrite each other's. This run carries on and saves; stop one of them and "
                  "give each run its own output_dir.")
        return self.conflict

    def release(self) -> None:
        """Unlock and remove the lock file (not left in output_dir, nor uploaded with it). Never raises: a lock file
        that was deleted or replaced is left alone (another run's lock is not ours to remove), with a warning."""
        if self._file is None:
            return
        try:
            if self._still_ours():
                os.remove(self.path)
            elif self.conflict is None:
                import logging

                logging.getLogger(__name__).warning(
                    f"The lock file {self.path} was deleted or replaced while this run held it: left as it is.")
        except OSError:
            pass
        finally:
            self._file.close()  # closing releases the flock
            self._file = None
            _HELD.pop(_lock_key(os.path.dirname(self.path)), None)


_HELD: dict[str, OutputDirLock] = {}  # output-dir locks this process holds, by real path


def _lock_key(output_dir: str) -> str:
    return os.path.realpath(output_dir or ".")


def held_lock(output_dir: str) -> OutputDirLock | None:
    """The lock this process holds on `output_dir`, if any."""
    return _HELD.get(_lock_key(output_dir))


@contextmanager
def hold_output_dir(output_dir: str, enabled: bool = True):
    """Hold `output_dir`'s lock inside the block (the one home of the lock: the training commands take it before
    anything writes there, `GADTrainer.train` when used from Python). Already held by this process, or `enabled`
    False (a process that does not save): nothing to do. Yields the lock or None."""
    if not enabled or held_lock(output_dir) is not None:
        yield held_lock(output_dir)
        return
    lock = OutputDirLock(output_dir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def check_output_dir_writable(output_dir: str) -> None:
    """Fail at the start, not at the first save hours later, when `output_dir` cannot be written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".gad_trl_write_test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise PermissionError(
            f"output_dir={output_dir!r} is not writable ({err.strerror or err}): checkpoints and the final model could "
            "not be saved. Fix its permissions or choose another output_dir."
        ) from err


# ---------------------------------------------------------------------------------------------- the run key
def data_digest(dataset, batch_size: int = 1024) -> str:
    """A SHA-256 over every row of a data set with a length, streamed in batches of `batch_size` (constant memory; a
    `datasets.Dataset` is read column-wise from Arrow): any changed row changes it."""
    import hashlib
    import json

    digest = hashlib.sha256()
    if hasattr(dataset, "iter"):
        batches = dataset.iter(batch_size=batch_size)
    else:
        rows = list(dataset)
        batches = (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    for batch in batches:
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def run_key(model_name: str, dataset, max_steps: int) -> dict:
    """What identifies a run for resuming: the student, the training data (row count and `data_digest`, over every
    row) and `max_steps`. The digest's key is `train_data_digest`: checkpoints written when the key held a digest of
    the first 1000 rows only (`train_digest`) are compared on the row count alone (`check_run_key` compares the keys
    both sides have)."""
    rows = len(dataset) if hasattr(dataset, "__len__") else None
    return {"model": model_name, "train_rows": rows,
            "train_data_digest": data_digest(dataset) if rows is not None else None, "max_steps": max_steps}


def check_run_key(checkpoint: str, key: dict) -> None:
    """A checkpoint resumes only the run that wrote it: a different student or data set is an error naming what
    differs (a checkpoint written before this check has no key and is accepted)."""
    import json

    path = os.path.join(checkpoint, RUN_KEY_NAME)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    # max_steps is recorded but may change: resuming with more steps extends a run (a checkpoint already at or past
    # this run's max_steps is stopped by GADTrainer.train instead).
    differs = [k for k in key if k != "max_steps" and k in saved and saved[k] != key[k]]
    if differs:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r:.80}, this run {key[k]!r:.80}" for k in differs)
        raise ValueError(
            f"{checkpoint} was written by another run ({details}). Resume it with the settings that wrote it, or start "
            "this run in a new output_dir (or without resume_from_checkpoint)."
        )


# ---------------------------------------------------------------------------------------------- complete checkpoints
def checkpoint_step(checkpoint: str) -> int | None:
    """The global step a checkpoint was saved at (its trainer_state.json), None if unreadable."""
    import json

    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError):
        return None


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


# ---------------------------------------------------------------------------------------------- resuming exactly
def with_resume_flag_value(argv: list[str]) -> list[str]:
    """`argv` where a bare `--resume_from_checkpoint` (last, or followed by another flag) reads
    `--resume_from_checkpoint true`: the documented "resume from the latest checkpoint" form."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == RESUME_FLAG and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out.insert(i + 1, "true")
            break
    return out


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
