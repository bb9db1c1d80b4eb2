"""Checks on a run's inputs that must fail before anything heavy loads, with an error naming the fix."""

from __future__ import annotations

import errno
import importlib
import os
import sys
from contextlib import contextmanager


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


def checkpoint_step(checkpoint: str) -> int | None:
    """The global step a checkpoint was saved at (its trainer_state.json), None if unreadable."""
    import json

    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError):
        return None


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
