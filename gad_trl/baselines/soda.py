"""SODA's preference data (arXiv 2604.03873): the teacher's answer is `chosen`, a sample of the frozen starting student
is `rejected`, and TRL's `DPOTrainer` trains on the pairs (`gad-trl soda`, docs/cli.md).

One pair per teacher answer: a row with k answers gives k pairs, each with its own student sample. The samples are
drawn once, before training, with transformers in this process (`TransformersSampler`) or from an OpenAI-compatible
server that serves the student, e.g. `gad-trl vllm-serve` (`OpenAISampler`, through `gad_trl.workflow.openai_chat`).

The samples are cached in a JSONL file (`gad_trl.workflow.jsonl_store`: appended one by one, fsynced, resumable after a
kill). A sample's id is its prompt's digest and its number among the samples of that prompt (`<digest>:<n>`), so a
rerun, a reordered data set or a subset of it reuses them. The file's first line records the student and the sampling
settings; opening it with other ones is an error (`SODACacheMismatch`) naming each difference, never a silent reuse
or a silent redraw. Each sample has its own seed (the settings' seed, its id, the draw), so a resumed run draws what
an uninterrupted one draws. An empty sample is drawn again (another seed, up to `max_attempts` draws); what is still
empty after that, or failed on the server, is an error naming the rows (`SODASampleError`); the samples done so far
stay cached, so a rerun only draws the rest.

Programmatic use, on in-memory rows and an in-memory model:

    pairs = build_soda_dataset(rows, model, tokenizer, temperature=1.0, max_new_tokens=256, seed=0)
    DPOTrainer(model, args=DPOConfig(...), train_dataset=pairs, processing_class=tokenizer).train()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..data import GADDataError, prompt_messages, text_answers

logger = logging.getLogger(__name__)

CACHE_FORMAT = "gad_trl.soda_rejected.v1"
SETTINGS_ID = "__settings__"  # the id of the cache's first line: the settings its samples were drawn with
ID_KEY = "key"


class SODACacheMismatch(ValueError):
    """A rejected-sample cache drawn from another student or with other sampling settings than the ones asked for."""


class SODASampleError(RuntimeError):
    """Rejected samples that could not be drawn (empty after every attempt, or failed on the server)."""


# --------------------------------------------------------------------------------------------------------------------
# Pairs: one per teacher answer
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceSlot:
    """One preference pair to build: the row and answer it comes from, its prompt, its chosen (teacher) text, and the
    id of its rejected sample (`key`: prompt digest + `sample_index`, the number of earlier pairs with this prompt)."""

    row: int
    answer: int
    prompt: list[dict]
    chosen: str
    key: str
    sample_index: int


def prompt_digest(prompt: list[dict]) -> str:
    """A short, stable hash of a prompt's messages: what a cached sample is filed under."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def preference_slots(rows, teacher_response_column: str = "teacher_response") -> list[PreferenceSlot]:
    """The pairs of GAD rows (a `datasets.Dataset` or a list of dicts), in row order: one per teacher answer.

    Prompts and answers are validated as the trainer does (`gad_trl.data.prompt_messages`, `teacher_texts`): a missing
    column, an empty answer or a malformed prompt is a `GADDataError` naming the row."""
    names = getattr(rows, "column_names", None)
    if names is not None and teacher_response_column not in names:
        raise GADDataError(
            f"The data set has no teacher response column '{teacher_response_column}' (columns: {names}). Add the "
            "teacher's answers (gad-trl generate-teacher), or set teacher_response_column to the column holding them."
        )
    seen: Counter[str] = Counter()
    slots = []
    for i, row in enumerate(rows):
        prompt = prompt_messages(row, i)
        digest = prompt_digest(prompt)
        for j, chosen in enumerate(text_answers(row, teacher_response_column, i, "SODA")):
            n = seen[digest]  # a repeated prompt (another row, or k answers) gets a sample of its own
            seen[digest] += 1
            slots.append(PreferenceSlot(i, j, prompt, chosen, f"{digest}:{n}", n))
    if not slots:
        raise GADDataError("The data set has no rows: SODA needs prompts with the teacher's answers.")
    return slots


def preference_rows(slots: list[PreferenceSlot], samples: dict[str, dict]) -> list[dict]:
    """TRL's conversational preference rows: `prompt` messages, `chosen` / `rejected` as one assistant message each,
    so `DPOTrainer` renders them with the student's chat template."""
    return [
        {
            "prompt": slot.prompt,
            "chosen": [{"role": "assistant", "content": slot.chosen}],
            "rejected": [{"role": "assistant", "content": samples[slot.key]["rejected"]}],
        }
        for slot in slots
    ]


# --------------------------------------------------------------------------------------------------------------------
# Sampling settings and the student's identity (the cache key)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RejectedSampling:
    """How the rejected samples are drawn. `temperature=0` is greedy decoding. `max_attempts`: draws of a sample that
    came back empty before it is reported (not part of the cache key)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    max_attempts: int = 3

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"rejected temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rejected top_p must be in (0, 1], got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"rejected max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}.")

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "max_attempts"}


def files_digest(path: str | os.PathLike) -> str | None:
    """A cheap digest of a local checkpoint folder's weights (None for a Hub id): each weight file's name and size and
    16 windows of 64 KiB spread over it, so retrained weights saved in place get another digest without reading a
    multi-GB file whole."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("config.json")])
    if not files:
        return None
    h = hashlib.sha256()
    window = 64 * 1024
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as handle:
            for i in range(16):
                handle.seek(max(0, (size - window) * i // 15))
                h.update(handle.read(window))
    return "files:" + h.hexdigest()[:16]


def params_digest(model) -> str:
    """A digest of an in-memory model's weights (the first values of every parameter): tells two snapshots apart."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            head = param.detach().reshape(-1)[:256].float().cpu()
            h.update(name.encode() + head.numpy().tobytes())
    return "params:" + h.hexdigest()[:16]


def cache_settings(identity: dict, sampling: RejectedSampling) -> dict:
    """What a cache's samples were drawn with: the student (`student`, `student_weights`) and the sampling key."""
    return json.loads(json.dumps({**identity, **sampling.key()}))  # as stored (tuples -> lists, ...)


# --------------------------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------------------------


class RejectedCache:
    """The rejected samples drawn so far, by id; backed by a `JsonlStore` at `path` (None: in memory only).

    The first line of the file holds `settings`; a file written with other settings raises `SODACacheMismatch`."""

    def __init__(self, path: str | os.PathLike | None, settings: dict):
        self.path, self.settings = path, settings
        self._records: dict[str, dict] = {}
        self._store = None
        if path is None:
            return
        from ..workflow.jsonl_store import JsonlStore

        self._store = JsonlStore(path, ID_KEY)
        try:
            self._check_header()
        except Exception:
            self._store.close()
            raise
        self._records = {k: v for k, v in self._store.done.items() if k != SETTINGS_ID}

    def _check_header(self) -> None:
        header = self._store.done.get(SETTINGS_ID)
        if header is None:
            if len(self._store):
                raise SODACacheMismatch(
                    f"{self.path} holds records but no settings line: it is not a SODA rejected-sample cache. Point "
                    "rejected_cache to another file, or delete this one."
                )
            self._store.append({ID_KEY: SETTINGS_ID, "format": CACHE_FORMAT, "settings": self.settings})
            return
        if header.get("format") != CACHE_FORMAT:
            raise SODACacheMismatch(f"{self.path} is not a {CACHE_FORMAT} cache (format {header.get('format')!r}).")
        stored = header.get("settings") or {}
        diff = {k: (stored.get(k), v) for k, v in self.settings.items() if stored.get(k) != v}
        if diff:
            details = "; ".join(f"{k}: cache {old!r}, asked {new!r}" for k, (old, new) in sorted(diff.items()))
            raise SODACacheMismatch(
                f"The rejected-sample cache {self.path} was drawn with other settings ({details}), so its samples are "
                "not the ones asked for. Use the settings it was drawn with, point rejected_cache to another file, or "
                "delete it to sample again."
            )

    def get(self, slot: PreferenceSlot) -> dict | None:
        record = self._records.get(slot.key)
        if record is not None and record.get("prompt") != slot.prompt:
            raise SODACacheMismatch(
                f"{self.path}: sample {slot.key!r} was drawn for another prompt than row {slot.row}'s (a digest "
                "collision or a hand-edited file). Delete the cache to sample again."
            )
        return record

    def put(self, record: dict) -> None:
        if self._store is not None:
            self._store.append(record)
        self._records[record[ID_KEY]] = record

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


# --------------------------------------------------------------------------------------------------------------------
# Samplers: draw the student's answers (transformers in this process, or an OpenAI-compatible server)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RejectedSample:
    text: str
    finished: bool | None  # False: cut at max_new_tokens; None: unknown
    tokens: int | None


@contextlib.contextmanager
def _plain_loading():
    """Load a full, unsharded copy even inside a DeepSpeed ZeRO-3 launch: transformers would otherwise partition it
    with `deepspeed.zero.Init`, a collective the other processes (waiting for the samples) never join."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


class TransformersSampler:
    """Draws samples with transformers in this process (`gad_trl.local_generation`: left-padded batches).

    `model`: a loaded causal LM (used as it is, its mode restored afterwards) or a path / Hub id, loaded on first use
    with `model_init_kwargs` (TRL's `create_model_from_path`) and freed by `close()`; `tokenizer` defaults to the
    path's. `student`: the identity recorded in the cache; default the path (with `revision`) or the model's
    `name_or_path`, plus a digest of its weights."""

    def __init__(self, model, tokenizer=None, batch_size: int = 8, model_init_kwargs: dict | None = None,
                 revision: str | None = None, trust_remote_code: bool = False, student: str | None = None,
                 progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self._path = model if isinstance(model, (str, os.PathLike)) else None
        self.model = None if self._path is not None else model
        self.tokenizer = tokenizer
        self.batch_size, self.progress = batch_size, progress
        self.model_init_kwargs = dict(model_init_kwargs or {})
        self.revision, self.trust_remote_code, self.student = revision, trust_remote_code, student
        if self.model is None and self._path is None:
            raise ValueError("TransformersSampler needs the student: a loaded model or its path / Hub id.")
        if self.model is not None and tokenizer is None:
            raise ValueError("TransformersSampler got a loaded model without its tokenizer: pass tokenizer=.")

    def identity(self) -> dict:
        if self.student is not None:
            return {"student": self.student, "student_weights": None}
        if self._path is not None:
            hub_revision = self.revision not in (None, "main") and not Path(self._path).is_dir()
            name = str(self._path) + (f"@{self.revision}" if hub_revision else "")
            return {"student": name, "student_weights": files_digest(self._path)}
        name = getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", None)
        return {"student": name or type(self.model).__name__, "student_weights": params_digest(self.model)}

    def _load(self) -> None:
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self._path, revision=self.revision,
                                                           trust_remote_code=self.trust_remote_code)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "The student's tokenizer has no chat template: SODA's pairs are chat messages, which the student "
                "answers and DPOTrainer renders through its template. Use an instruct/chat checkpoint, or set "
                "tokenizer.chat_template."
            )
        if self.model is None:
            from trl.trainer.utils import create_model_from_path

            kwargs = {"revision": self.revision, "trust_remote_code": self.trust_remote_code, **self.model_init_kwargs}
            with _plain_loading():
                self.model = create_model_from_path(str(self._path), **{k: v for k, v in kwargs.items() if v is not None})
            if getattr(self.model, "hf_device_map", None) is None:
                from accelerate import PartialState

                self.model.to(PartialState().device)

    def sample(self, slots: list[PreferenceSlot], sampling: RejectedSampling, attempt: int = 0
               ) -> Iterator[tuple[PreferenceSlot, RejectedSample | BaseException]]:
        """Yield `(slot, sample)` batch by batch (so each batch is cached before the next is drawn)."""
        from .. import local_generation

        self._load()
        if sampling.temperature > 0:
            kwargs = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs = dict(do_sample=False)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(slots), desc="SODA rejected samples", unit="sample", dynamic_ncols=True)
        try:
            for start in range(0, len(slots), self.batch_size):
                batch = slots[start:start + self.batch_size]
                # A random stream per slot (its key: the prompt's digest and repeat), per redraw: a resumed run,
                # which draws only the slots not yet cached, draws the same samples as an uninterrupted one.
                completions = local_generation.generate_completions(
                    self.model, self.tokenizer, [s.prompt for s in batch], sampling.max_new_tokens,
                    batch_size=len(batch), row_seeds=[request_seed(sampling.seed, s.key, attempt) for s in batch],
                    **kwargs)
                for slot, (ids, finished) in zip(batch, completions):
                    body = ids[:-1] if finished else ids  # the stop token is the chat template's to write
                    yield slot, RejectedSample(self.tokenizer.decode(body, skip_special_tokens=True), finished,
                                               len(body))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        """Free a model this sampler loaded (a model passed in is the caller's)."""
        if self._path is not None and self.model is not None:
            import gc

            import torch

            self.model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def request_seed(seed: int, sample_index: int | str, attempt: int) -> int:
    """The seed of one sample: on a server per request (`sample_index`: the k samples of one prompt, and each redraw,
    must differ), locally per slot (`sample_index`: the slot's key), so a resumed run draws what an uninterrupted one
    draws."""
    return int(hashlib.sha256(f"{seed}:{sample_index}:{attempt}".encode()).hexdigest()[:8], 16) % 2**31


class OpenAISampler:
    """Draws samples from an OpenAI-compatible server serving the starting student (`gad-trl vllm-serve --model
    STUDENT`), through `gad_trl.workflow.openai_chat` (its retries and error policy). `model`: the served name
    (default the server's only model); `api_key_env`: the variable holding its key (None: no key sent). Parameters the
    request leaves unset (top_k, repetition penalty) are the server's defaults: vLLM takes them from the model's
    generation_config.json."""

    def __init__(self, base_url: str | None = None, model: str | None = None, client=None,
                 api_key_env: str | None = None, concurrency: int = 8, request_timeout: float = 600.0,
                 max_retries: int = 5):
        from ..workflow.openai_chat import make_client

        if client is None and not base_url:
            raise ValueError("OpenAISampler needs base_url (e.g. http://127.0.0.1:8000/v1) or a client.")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}.")
        self.client = client or make_client(base_url, api_key_env, request_timeout, max_retries)
        self._model, self.concurrency = model, concurrency

    @property
    def model(self) -> str:
        from ..workflow.openai_chat import resolve_model

        if self._model is None:
            self._model = resolve_model(self.client, None)
        return self._model

    def identity(self) -> dict:
        return {"student": self.model, "student_weights": files_digest(self.model)}

    def sample(self, slots: list[PreferenceSlot], sampling: RejectedSampling, attempt: int = 0
               ) -> Iterator[tuple[PreferenceSlot, RejectedSample | BaseException]]:
        from ..workflow.openai_chat import chat, describe_error, map_bounded

        def ask(slot):
            return chat(self.client, self.model, slot.prompt, temperature=sampling.temperature,
                        top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                        seed=request_seed(sampling.seed, slot.sample_index, attempt))

        for slot, result, error in map_bounded(ask, slots, self.concurrency, "SODA rejected samples"):
            if error is not None:
                yield slot, RuntimeError(describe_error(error, self.client))
            else:
                finished = None if result.finish_reason is None else result.finish_reason != "length"
                yield slot, RejectedSample(result.text, finished, result.completion_tokens)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------------------------
# Drawing (or reusing) the samples, and the data set
# --------------------------------------------------------------------------------------------------------------------


def _record(slot: PreferenceSlot, sample: RejectedSample, attempt: int) -> dict:
    return {ID_KEY: slot.key, "prompt": slot.prompt, "rejected": sample.text, "finished": sample.finished,
            "completion_tokens": sample.tokens, "row": slot.row, "answer": slot.answer, "attempt": attempt}


def _draw(pending: list[PreferenceSlot], sampler, sampling: RejectedSampling, cache: RejectedCache,
          found: dict[str, dict]) -> tuple[list[PreferenceSlot], dict[str, tuple[PreferenceSlot, str]]]:
    """Draw `pending` (up to `sampling.max_attempts` times for empty samples), caching each usable sample as it comes.
    Returns (still empty, failed: key -> (slot, error))."""
    failed: dict[str, tuple[PreferenceSlot, str]] = {}
    for attempt in range(sampling.max_attempts):
        if not pending:
            break
        if attempt:
            logger.warning("SODA: %d rejected sample(s) came back empty; drawing them again (attempt %d of %d).",
                           len(pending), attempt + 1, sampling.max_attempts)
        empty = []
        for slot, result in sampler.sample(pending, sampling, attempt):
            if isinstance(result, BaseException):
                failed[slot.key] = (slot, str(result))
            elif not result.text.strip():
                empty.append(slot)
            else:
                record = _record(slot, result, attempt)
                cache.put(record)
                found[slot.key] = record
        pending = empty
    return pending, failed


def _raise_unusable(empty: list[PreferenceSlot], failed: dict, sampling: RejectedSampling, cache_path) -> None:
    parts = []
    if empty:
        rows = sorted({s.row for s in empty})
        parts.append(
            f"{len(empty)} sample(s) were empty after {sampling.max_attempts} draw(s) (rows {rows[:10]}"
            f"{'...' if len(rows) > 10 else ''}): the student ends its answer at once or writes only special tokens "
            "there. Check those prompts, raise rejected_temperature, or drop the rows from the data set"
        )
    if failed:
        (slot, error), *_ = failed.values()
        parts.append(f"{len(failed)} request(s) failed (first: row {slot.row}: {error})")
    where = f"; the samples drawn so far are cached in {cache_path}, so a rerun draws only the rest" if cache_path else ""
    raise SODASampleError("SODA rejected samples: " + "; ".join(parts) + where + ".")


def _report_quality(slots: list[PreferenceSlot], found: dict[str, dict], max_new_tokens: int) -> None:
    cut = sum(found[s.key].get("finished") is False for s in slots)
    same = sum(found[s.key]["rejected"].strip() == s.chosen.strip() for s in slots)
    if cut:
        logger.warning(
            "SODA: %d of %d rejected samples were cut at max_new_tokens=%d (kept: DPO pushes them down as written). "
            "If the student's answers are longer, raise rejected_max_new_tokens.", cut, len(slots), max_new_tokens)
    if same:
        logger.warning("SODA: %d of %d pairs have a rejected sample equal to the teacher's answer (kept; such a pair "
                       "gives DPO no gradient).", same, len(slots))


def rejected_samples(slots: list[PreferenceSlot], sampler, sampling: RejectedSampling,
                     cache_path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The rejected sample of every slot, by `slot.key`: from the cache at `cache_path` where there, else drawn with
    `sampler` (and cached). Raises `SODACacheMismatch` (other student / settings) or `SODASampleError` (unusable
    samples, named)."""
    cache = RejectedCache(cache_path, cache_settings(sampler.identity(), sampling))
    try:
        found = {}
        for slot in slots:
            record = cache.get(slot)
            if record is not None:
                found[slot.key] = record
        pending = [s for s in slots if s.key not in found]
        logger.info("SODA: %d rejected samples needed, %d from the cache%s, %d to draw.", len(slots), len(found),
                    f" {cache_path}" if cache_path else "", len(pending))
        empty, failed = _draw(pending, sampler, sampling, cache, found) if pending else ([], {})
    finally:
        cache.close()
    if empty or failed:
        _raise_unusable(empty, failed, sampling, cache_path)
    _report_quality(slots, found, sampling.max_new_tokens)
    return found


def build_soda_dataset(rows, model=None, tokenizer=None, *, teacher_response_column: str = "teacher_response",
                       temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 512, seed: int = 0,
                       max_attempts: int = 3, batch_size: int = 8, cache_path: str | os.PathLike | None = None,
                       sampler=None, student: str | None = None):
    """SODA's preference data set from GAD rows: a `datasets.Dataset` with `prompt`, `chosen`, `rejected` (TRL's
    conversational preference format), one row per teacher answer, ready for `DPOTrainer`.

    `rows`: a `datasets.Dataset` or a list of dicts (a `prompt`/`content` column and the teacher column, one answer or
    a list of k). The rejected samples come from `sampler` (`TransformersSampler`, `OpenAISampler`, or any object with
    `identity()`, `sample()` and `close()`), else from `model` (a loaded causal LM with its `tokenizer`, or a path)
    sampled here with transformers. `cache_path`: a JSONL file keeping the samples across calls (None: not kept).
    `student`: the student's name recorded in the cache (default: the model's path or name, with a weights digest).
    """
    from datasets import Dataset

    sampling = RejectedSampling(temperature, top_p, max_new_tokens, seed, max_attempts)
    slots = preference_slots(rows, teacher_response_column)
    own = sampler is None
    if own:
        if model is None:
            raise ValueError("build_soda_dataset needs the student: `model` (+ `tokenizer`) or a `sampler`.")
        sampler = TransformersSampler(model, tokenizer, batch_size=batch_size, student=student)
    try:
        samples = rejected_samples(slots, sampler, sampling, cache_path)
    finally:
        if own:
            sampler.close()
    return Dataset.from_list(preference_rows(slots, samples))
