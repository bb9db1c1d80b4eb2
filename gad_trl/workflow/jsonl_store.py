"""An append-only JSONL file of records keyed by a stable id: what makes long API jobs resumable.

Each finished record is appended as one line, flushed and fsynced before the next one is taken as done, so a run
killed at any instant (even `kill -9` or a power cut) loses at most the line it was writing. Re-opening the file
reads every complete line back; a torn last line (no trailing newline, or not valid JSON) is cut off, and the
record it held is simply produced again. Used by `gad-trl generate-teacher` and `gad-trl evaluate`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class JsonlStoreError(ValueError):
    """A JSONL store that can't be resumed safely (a corrupt line in the middle, a duplicate id)."""


class JsonlStore:
    """Records `{id_key: ..., ...}` appended to `path`; `done` maps each stored id to its record.

    `JsonlStore(path, id_key)` opens (or creates) the file and loads what is there; `append(record)` writes one
    record durably; `close()` closes the file. Not thread-safe: append from one thread.
    """

    def __init__(self, path: str | os.PathLike, id_key: str):
        self.path = Path(path)
        self.id_key = id_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict] = {}
        self.dropped_torn_line = False
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos = good_end = 0  # good_end: byte offset just after the last complete, valid line
        while pos < len(data):
            newline = data.find(b"\n", pos)
            if newline == -1:
                # Every record is written with its newline in one call: a line without one was cut by a kill.
                logger.warning("%s: dropping a torn last line; its record will be redone.", self.path)
                self.dropped_torn_line = True
                break
            line, pos = data[pos:newline], newline + 1
            if line.strip():
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or self.id_key not in record:
                        raise ValueError(f"not a JSON object with the key {self.id_key!r}")
                except ValueError as err:
                    if data[pos:].strip():  # only the last line may be torn; anything earlier is corruption
                        number = data[:newline].count(b"\n") + 1
                        raise JsonlStoreError(
                            f"{self.path}, line {number}: {err}. Only a torn last line can be repaired; fix or "
                            "remove this line (or start a new output file)."
                        ) from err
                    logger.warning("%s: dropping a torn last line (%s); its record will be redone.", self.path, err)
                    self.dropped_torn_line = True
                    break
                key = str(record[self.id_key])
                if key in self.done:
                    raise JsonlStoreError(f"{self.path}: id {key!r} appears twice.")
                self.done[key] = record
            good_end = pos
        if good_end < len(data):  # cut the torn tail so the next append starts on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())

    def __contains__(self, key) -> bool:
        return str(key) in self.done

    def __len__(self) -> int:
        return len(self.done)

    def append(self, record: dict) -> None:
        key = str(record[self.id_key])
        if key in self.done:
            raise JsonlStoreError(f"{self.path}: id {key!r} is already stored.")
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[key] = record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonlStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl_atomic(records, path: str | os.PathLike) -> None:
    """Write `records` to `path` through a temporary file and `os.replace`: the old file stays whole until then."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
