"""Build a GAD training set from a black-box teacher: chat completions per prompt from an OpenAI-compatible endpoint.

Rows come back in the trainer's format: the input row (its prompt column untouched) plus `teacher_response` (text),
`teacher_finish_reason` and the row id. The run is resumable with nothing lost: each finished row is appended to the
output JSONL (flushed and fsynced, `gad_trl.workflow.jsonl_store`); a restarted run with the same output skips the rows already
there, redoes a row torn by a kill, and retries the rows that failed. Rows that fail after the client's retries are
written, with their error, to `<output>.errors.jsonl` and counted in the summary; none is dropped silently.

`--num_answers k` (k > 1): k answers per prompt, `teacher_response` (and `teacher_finish_reason`) a list of k. They are
asked in one request with the API's `n`; an endpoint that rejects `n` (HTTP 400/422) or ignores it (fewer choices)
gets one request per missing answer instead (seed + answer index when --seed is set: the seeds vLLM gives its n
samples), which the log says once. Each answer is appended to `<output>.answers.jsonl` as it arrives; a row is
appended to the output only with all its k answers, so a killed run keeps the answers it had and the rerun asks only
for the missing (row, answer index) pairs. The answers file is removed when the data set is complete.

`--tools module:function,...`: each answer is a tool-using trajectory recorded through the tool-calling API
(`gad_trl.workflow.tool_calling`); with k > 1, k independent trajectories (one request chain each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .endpoint import Endpoint, api_key_env_field, base_url_field, extra_body_field, max_retries_field, request_timeout_field
from .tool_calling import DEFAULT_MAX_TOOL_RESULT_CHARS, DEFAULT_TOOL_TIMEOUT

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".jsonl", ".parquet")


@dataclass
class TeacherGenerationArguments:
    """Arguments of `gad-trl generate-teacher` (flags, or keys of a `--config` YAML)."""

    dataset_name: str = field(metadata={"help": "Prompts: Hub id, local directory or .parquet/.json/.jsonl file."})
    output: str = field(
        metadata={"help": "Output file, `.jsonl` or `.parquet`. Re-running with the same output resumes the run."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Data set configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompts."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    id_column: str = field(
        default="row_id",
        metadata={"help": "Column with a unique id per row; when the data set has none, the row index is used and "
                  "written to this column. Resuming matches rows by this id."},
    )
    teacher_response_column: str = field(
        default="teacher_response", metadata={"help": "Column the teacher's answer is written to."}
    )
    num_answers: int = field(
        default=1,
        metadata={"help": "Teacher answers per prompt (k). 1: the answer is a string. k > 1: a list of k answers "
                  "(and of k finish reasons), asked in one request with the API's `n`; where the endpoint rejects "
                  "or ignores `n`, one request per answer (seed + answer index with --seed). Resumes per answer."},
    )
    tools: str | None = field(
        default=None,
        metadata={"help": "Comma-separated `module:function` tools (type hints + Google-style docstrings, as TRL "
                  "needs): record teacher trajectories through the OpenAI tool-calling API, the tools run here. "
                  "teacher_response is then the list of messages after the prompt (assistant tool calls, tool "
                  "results, final answer). With --num_answers k: k independent trajectories."},
    )
    max_tool_calls: int = field(
        default=8,
        metadata={"help": "With --tools: most tool calls per trajectory; a teacher still calling tools past it fails "
                  "the row (listed in the errors file; no trajectory without a final answer is written)."},
    )
    tool_timeout: float = field(
        default=DEFAULT_TOOL_TIMEOUT,
        metadata={"help": "With --tools: seconds to wait for one tool call; past it the model gets an error result "
                  "and carries on. The call's thread cannot be killed and keeps running in the background."},
    )
    max_tool_result_chars: int = field(
        default=DEFAULT_MAX_TOOL_RESULT_CHARS,
        metadata={"help": "With --tools: longest tool result (characters) sent back to the teacher; a longer one is "
                  "cut, with a note giving its full length (a huge result would otherwise go out in every request "
                  "that follows)."},
    )
    base_url: str = base_url_field("the teacher", "http://127.0.0.1:8000/v1")
    model: str | None = field(
        default=None, metadata={"help": "Teacher model name. Default: the endpoint's only model (a vLLM server)."}
    )
    api_key_env: str = api_key_env_field("the teacher")
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message sent to the teacher before prompts that have none (not written to the "
                  "data set: the student trains on the prompt as it is, so it learns the behaviour the system "
                  "prompt asks for from the answers alone: context distillation)."},
    )
    system_prompt_file: str | None = field(
        default=None,
        metadata={"help": "Read --system_prompt from this UTF-8 text file (a long hidden instruction)."},
    )
    few_shot_file: str | None = field(
        default=None,
        metadata={"help": "JSON file: a list of chat messages (user / assistant turns, e.g. worked examples of the "
                  "hidden instruction) sent to the teacher after the system prompt and before each prompt. Like the "
                  "system prompt, never written to the data set."},
    )
    answer_filter: str | None = field(
        default=None,
        metadata={"help": "`module:function` called as function(prompt_messages, answer) -> bool on every teacher "
                  "answer (prompt_messages: the row's prompt as saved, without the hidden context; answer: the text, "
                  "or the trajectory with --tools). With --num_answers N candidates per prompt, only the passing "
                  "ones are written (best-of-N filtering); prompts with none passing go to "
                  "`<output>.filtered.jsonl` with their candidates, and every candidate stays in "
                  "`<output>.candidates.jsonl`, so another filter can be applied without asking again."},
    )
    keep_answers: int | None = field(
        default=None,
        metadata={"help": "With --answer_filter: keep at most this many passing answers per prompt (1: the answer "
                  "is a string). Default: all that pass, as a list."},
    )
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature. Default: the server's."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling. Default: the server's."})
    max_tokens: int | None = field(default=None, metadata={"help": "Longest teacher answer, in tokens."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed, where the endpoint supports one."})
    extra_body: str | None = extra_body_field("the teacher")
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    request_timeout: float = request_timeout_field()
    max_retries: int = max_retries_field()
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The student's tokenizer: print the `analyze-lengths` summary of the result. Unset: skip."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the finished data set to the Hub."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub data set id for --push_to_hub."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub data set as private."})

    def __post_init__(self):
        suffix = Path(self.output).suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise ValueError(f"--output {self.output!r}: use a .jsonl or .parquet file.")
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id (e.g. your-name/lmsys-teacher-answers).")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}.")
        self.endpoint()  # checked: URL, key variable, timeout, retries, extra body
        if self.num_answers < 1:
            raise ValueError(f"--num_answers must be >= 1, got {self.num_answers}.")
        if self.max_tool_calls < 1:
            raise ValueError(f"--max_tool_calls must be >= 1, got {self.max_tool_calls}.")
        if not self.tool_timeout > 0:
            raise ValueError(f"--tool_timeout must be > 0 seconds, got {self.tool_timeout}.")
        if self.system_prompt_file is not None:
            if self.system_prompt is not None:
                raise ValueError("Give the system prompt once: --system_prompt or --system_prompt_file, not both.")
            self.system_prompt = read_text_file(self.system_prompt_file, "--system_prompt_file")
        self.few_shot_messages()  # fail early on a bad file
        if self.keep_answers is not None and self.answer_filter is None:
            raise ValueError("--keep_answers selects among the answers that pass --answer_filter: set --answer_filter.")
        if self.keep_answers is not None and not 1 <= self.keep_answers <= self.num_answers:
            raise ValueError(f"--keep_answers must be between 1 and --num_answers ({self.num_answers}), got "
                             f"{self.keep_answers}.")
        if self.max_tool_result_chars < 1:
            raise ValueError(f"--max_tool_result_chars must be >= 1, got {self.max_tool_result_chars}.")
        if self.tools is not None:
            from .tool_calling import parse_tool_specs

            if not parse_tool_specs(self.tools):
                raise ValueError("--tools names no function; expected 'module:function[,module:function...]'.")

    def endpoint(self) -> Endpoint:
        """The teacher's endpoint (`gad_trl.workflow.endpoint`), checked."""
        return Endpoint(self.base_url, self.api_key_env, self.request_timeout, self.max_retries, self.extra_body).check()

    def extra_body_dict(self) -> dict | None:
        return self.endpoint().extra_body_dict()

    def few_shot_messages(self) -> list[dict]:
        return read_few_shot(self.few_shot_file) if self.few_shot_file else []

    @property
    def progress_path(self) -> Path:
        """The JSONL rows are appended to: the output itself, `<output>.partial.jsonl` for Parquet, or, with
        --answer_filter, `<output>.candidates.jsonl` (every candidate, kept after the filtered output is written)."""
        out = Path(self.output)
        if self.answer_filter is not None:
            return out.with_name(out.name + ".candidates.jsonl")
        return out if out.suffix.lower() == ".jsonl" else out.with_name(out.name + ".partial.jsonl")

    @property
    def filtered_path(self) -> Path:
        """With --answer_filter: the prompts none of whose answers passed, with their candidates."""
        return Path(self.output).with_name(Path(self.output).name + ".filtered.jsonl")

    @property
    def answers_path(self) -> Path:
        """With --num_answers k > 1: the JSONL each answer is appended to as it arrives (removed once complete)."""
        return Path(self.output).with_name(Path(self.output).name + ".answers.jsonl")

    @property
    def errors_path(self) -> Path:
        return Path(self.output).with_name(Path(self.output).name + ".errors.jsonl")

    @property
    def summary_path(self) -> Path:
        return Path(self.output).with_name(Path(self.output).name + ".summary.json")


def with_system_prompt(messages: list[dict], system_prompt: str | None, few_shot: list[dict] | None = None) -> list[dict]:
    """What the teacher is sent: the system prompt (unless the row has its own), the few-shot turns, then the row's
    messages. Neither is saved: the student sees the row as it is."""
    head = []
    if messages and messages[0]["role"] == "system":
        head, messages = [messages[0]], messages[1:]
    elif system_prompt:
        head = [{"role": "system", "content": system_prompt}]
    return [*head, *(few_shot or []), *messages]


def read_text_file(path: str, option: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ValueError(f"{option} {path!r} cannot be read ({err.strerror or err}).") from err
    if not text:
        raise ValueError(f"{option} {path!r} is empty; give the instruction text, or drop the option.")
    return text


def read_few_shot(path: str) -> list[dict]:
    """A few-shot file's messages: a JSON list of {"role": "user"|"assistant", "content": text}, user first,
    alternating, ending with an assistant turn (the example answer)."""
    try:
        value = json.loads(read_text_file(path, "--few_shot_file"))
    except json.JSONDecodeError as err:
        raise ValueError(f"--few_shot_file {path!r} is not valid JSON ({err}).") from err
    if not isinstance(value, list) or not value:
        raise ValueError(f"--few_shot_file {path!r} must hold a non-empty JSON list of chat messages.")
    for i, m in enumerate(value):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != want or not isinstance(m.get("content"), str):
            raise ValueError(
                f"--few_shot_file {path!r}: message {i} must be {{\"role\": \"{want}\", \"content\": \"...\"}} "
                "(user and assistant turns alternate, user first)."
            )
    if len(value) % 2:
        raise ValueError(f"--few_shot_file {path!r} ends with a user turn; end with the assistant's example answer.")
    return value


def keyed_rows(dataset, id_column: str) -> list[tuple[str, dict]]:
    """`(id, row)` pairs: the id column's values (which must be unique), or the row index as text."""
    has_ids = id_column in dataset.column_names
    rows = []
    for index, row in enumerate(dataset):
        key = str(row[id_column]) if has_ids else str(index)
        rows.append((key, row))
    if has_ids:
        seen = set()
        for key, _ in rows:
            if key in seen:
                raise ValueError(f"Column {id_column!r} has the id {key!r} twice; ids must be unique (or pick "
                                 "another --id_column that does not exist, to use the row index).")
            seen.add(key)
    return rows


def _prompt_column(row: dict) -> str:
    from ..data import PROMPT_COLUMN, VERL_PROMPT_COLUMN

    return PROMPT_COLUMN if row.get(PROMPT_COLUMN) is not None else VERL_PROMPT_COLUMN


def _same_prompt(stored: dict, row: dict) -> bool:
    column = _prompt_column(row)
    return json.dumps(stored.get(column), sort_keys=True, default=str) == json.dumps(row.get(column), sort_keys=True,
                                                                                     default=str)


def load_prompts(dataset_name: str, dataset_config: str | None = None, split: str = "train",
                 max_samples: int | None = None):
    """One split of a data set the trainer can read (`gad_trl.data.load_any_dataset`), first `max_samples`."""
    from ..data import load_any_dataset

    dataset = load_any_dataset(dataset_name, dataset_config)
    if split not in dataset:
        raise KeyError(f"Split {split!r} not in {dataset_name!r} (splits: {list(dataset)}).")
    dataset = dataset[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{dataset_name!r} ({split}) has no rows.")
    return dataset


def _prompt_fingerprint(row: dict) -> str:
    """A short hash of a row's prompt column (what `_same_prompt` compares), kept with each stored answer."""
    column = _prompt_column(row)
    text = json.dumps(row.get(column), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _runs(indices: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted answer indices: [0, 1, 3] -> [[0, 1], [3]] (one `n` request per run)."""
    runs: list[list[int]] = []
    for j in indices:
        if runs and runs[-1][-1] == j - 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    return runs


class _NSupport:
    """Whether `n` is still worth sending (shared by the request threads); `give_up` logs the reason once."""

    def __init__(self, seeded: bool):
        self.usable = True
        self.seeded = seeded
        self._lock = threading.Lock()

    def give_up(self, why: str) -> None:
        with self._lock:
            if not self.usable:
                return
            self.usable = False
        logger.warning("%s: asking one request per missing answer from now on%s.", why,
                       " (seed + answer index as each request's seed)" if self.seeded else "")


def _answer_count(value) -> int:
    from ..data import teacher_answers

    return len(teacher_answers(value)) if value is not None else 0


def _holds_text(value, k: int) -> bool:
    """Whether a stored teacher column value holds text answers (else tool trajectories)."""
    return isinstance(value, str) if k == 1 else all(isinstance(a, str) for a in value or [])


def _truncated(record: dict) -> int:
    reason = record.get("teacher_finish_reason")
    if isinstance(reason, list):
        return sum(r == "length" for r in reason)
    return int(reason == "length")


def generate_teacher(args: TeacherGenerationArguments, dataset=None, client=None) -> dict:
    """Run (or resume) the generation; returns the summary (counts, paths, failed ids)."""
    from ..data import answer_text, normalize_trajectory, prompt_messages
    from ..preflight import import_callable
    from .jsonl_store import JsonlStore, write_jsonl_atomic
    from .openai_chat import (
        chat,
        chat_choices,
        describe_error,
        map_bounded,
        rejected_request,
        resolve_model,
    )

    k = args.num_answers
    column = args.teacher_response_column
    tools = schemas = None
    if args.tools:  # resolved (imported, schemas built) before any request is sent
        from .tool_calling import record_trajectory, resolve_tools, tool_schemas

        functions = resolve_tools(args.tools)
        schemas = tool_schemas(functions)
        tools = {schema["function"]["name"]: fn for schema, fn in zip(schemas, functions)}

    if dataset is None:
        dataset = load_prompts(args.dataset_name, args.dataset_config, args.dataset_split, args.max_samples)
    rows = keyed_rows(dataset, args.id_column)
    # Every prompt is validated (as the trainer does) before any request is sent.
    few_shot = args.few_shot_messages()
    messages = {key: with_system_prompt(prompt_messages(row, key), args.system_prompt, few_shot) for key, row in rows}
    answer_filter = import_callable(args.answer_filter, "--answer_filter") if args.answer_filter else None
    by_key = dict(rows)

    store = JsonlStore(args.progress_path, args.id_column)
    answers_store = None
    try:
        known = {key for key, _ in rows}
        stale = [key for key in store.done if key not in known]
        if stale:
            raise ValueError(
                f"{args.progress_path} holds {len(stale)} row id(s) that are not in the prompts (e.g. {stale[:3]}): it "
                "was written from another data set or --max_samples. Use another --output, or the same inputs."
            )
        for key, row in rows:
            if key in store and not _same_prompt(store.done[key], row):
                raise ValueError(
                    f"{args.progress_path}: row {key!r} was written for a different prompt than the data set's row "
                    f"{key!r}. The prompts changed since the first run: use another --output."
                )
            if key in store and _answer_count(store.done[key].get(column)) != k:
                raise ValueError(
                    f"{args.progress_path}: row {key!r} holds {_answer_count(store.done[key].get(column))} teacher "
                    f"answer(s) in {column!r}, this run asks for --num_answers {k}: use another --output, or the same "
                    "--num_answers."
                )
            if key in store and _holds_text(store.done[key].get(column), k) != (tools is None):
                raise ValueError(
                    f"{args.progress_path}: row {key!r} holds "
                    + ("text answers; this run records tool trajectories (--tools)" if tools is not None else
                       "tool trajectories; this run asks for text answers (no --tools)")
                    + ": use another --output, or the same --tools."
                )
        # Answers of rows not complete yet (k > 1): kept across runs, one line per (row, answer index).
        partial: dict[str, dict[int, tuple]] = {}
        if k > 1:
            answers_store = JsonlStore(args.answers_path, "answer_key")
            for record in answers_store.done.values():
                key, j = str(record["row"]), int(record["answer_index"])
                if key not in known:
                    raise ValueError(
                        f"{args.answers_path} holds answers for row {key!r}, which is not in the prompts: it was "
                        "written from another data set or --max_samples. Use another --output, or the same inputs."
                    )
                if record.get("prompt_sha") != _prompt_fingerprint(by_key[key]):
                    raise ValueError(
                        f"{args.answers_path}: the answers of row {key!r} were written for a different prompt than "
                        "the data set's row. The prompts changed since the first run: use another --output."
                    )
                if isinstance(record["answer"], str) != (tools is None):
                    raise ValueError(
                        f"{args.answers_path}: the answers of row {key!r} are "
                        + ("text; this run records tool trajectories (--tools)" if tools is not None else
                           "tool trajectories; this run asks for text answers (no --tools)")
                        + ": use another --output, or the same --tools."
                    )
                if key not in store and j < k:
                    partial.setdefault(key, {})[j] = (record["answer"], record["finish_reason"])
    except BaseException:
        store.close()
        if answers_store is not None:
            answers_store.close()
        raise
    resumed = len(store)
    pending = [(key, row) for key, row in rows if key not in store]
    missing_at_start = {key: k - len(partial.get(key, {})) for key, _ in pending}
    kept = sum(len(partial.get(key, {})) for key, _ in pending)
    if resumed:
        logger.info("Resuming: %d of %d rows already in %s.", resumed, len(rows), args.progress_path)
    if kept:
        logger.info("Resuming: %d answer(s) of unfinished rows already in %s; asking only for the missing ones.",
                    kept, args.answers_path)

    if client is None:
        client = args.endpoint().client()
    model = resolve_model(client, args.model) if pending else args.model
    params = dict(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                  extra_body=args.extra_body_dict())
    n_support = _NSupport(seeded=args.seed is not None)
    lock = threading.Lock()

    def seed_for(j: int) -> int | None:
        # Answer j's seed: what vLLM gives the j-th of n samples, so a resumed or one-by-one answer is the same.
        return None if args.seed is None else args.seed + j

    def where(j: int) -> str:
        return f" answer {j}" if k > 1 else ""

    def keep(key, j, value, finish_reason):
        with lock:
            partial.setdefault(key, {})[j] = (value, finish_reason)
            if answers_store is not None:
                answers_store.append({"answer_key": json.dumps([key, j]), "row": key, "answer_index": j,
                                      "prompt_sha": _prompt_fingerprint(by_key[key]), "answer": value,
                                      "finish_reason": finish_reason})

    def take(key, j, result, errors):
        try:
            # The trainer rejects empty teacher answers: such an answer is a failure, listed, never written.
            answer_text(result.text, key, column, where(j))
        except Exception as err:  # noqa: BLE001
            errors[j] = err
            return
        keep(key, j, result.text, result.finish_reason)

    def ask(item):
        """Ask for the row's missing answers; returns `{answer index: error}` for those that failed."""
        key, _ = item
        have = partial.get(key, {})
        missing = [j for j in range(k) if j not in have]
        errors: dict[int, BaseException] = {}
        if tools is not None:
            for j in missing:  # one request chain per trajectory
                try:
                    result = record_trajectory(client, model, messages[key], tools, schemas, args.max_tool_calls,
                                               args.tool_timeout, seed=seed_for(j),
                                               max_tool_result_chars=args.max_tool_result_chars, **params)
                    normalize_trajectory(result.messages, key, column, where(j))
                except Exception as err:  # noqa: BLE001 - listed against the row
                    errors[j] = err
                    continue
                keep(key, j, result.messages, result.finish_reason)
            return errors
        for run in _runs(missing):
            todo, rejection = run, None
            if len(run) > 1 and n_support.usable:
                try:
                    results = chat_choices(client, model, messages[key], n=len(run), seed=seed_for(run[0]), **params)
                except Exception as err:  # noqa: BLE001
                    if not rejected_request(err):
                        errors.update(dict.fromkeys(run, err))
                        continue
                    rejection = err  # maybe `n` itself: try one request per answer
                else:
                    for j, result in zip(run, results):
                        take(key, j, result, errors)
                    if len(results) < len(run):
                        n_support.give_up(f"The endpoint answered {len(results)} choice(s) to a request for n="
                                          f"{len(run)} (it ignores `n`)")
                    todo = run[len(results):]
            answered = False
            for j in todo:
                try:
                    result = chat(client, model, messages[key], seed=seed_for(j), **params)
                except Exception as err:  # noqa: BLE001
                    errors[j] = err
                    continue
                answered = True
                take(key, j, result, errors)
            if rejection is not None and answered:  # the same request without `n` went through: `n` was refused
                n_support.give_up(f"The endpoint refused a request with n={len(run)} "
                                  f"({describe_error(rejection, client)})")
        return errors

    failures = []
    failed_rows: list[str] = []
    try:
        for (key, row), errors, error in map_bounded(
            ask, pending, args.concurrency, "teacher answers", initial=resumed * k + kept, total=len(rows) * k,
            size=lambda item: missing_at_start[item[0]], unit="answer" if k > 1 else "row",
        ):  # fmt: skip
            if error is not None:  # not expected: `ask` lists its errors per answer
                errors = {j: error for j in range(k) if j not in partial.get(key, {})}
            if errors:
                failed_rows.append(key)
                for j in sorted(errors):
                    entry = {args.id_column: key}
                    if k > 1:
                        entry["answer_index"] = j
                    entry["error"] = describe_error(errors[j], client)
                    failures.append(entry)
                    logger.warning("Row %s%s failed: %s", key, where(j), entry["error"])
                continue
            got = partial.pop(key)
            out = dict(row)
            out[args.id_column] = row.get(args.id_column, key)
            if k == 1:
                out[column], out["teacher_finish_reason"] = got[0]
            else:
                out[column] = [got[j][0] for j in range(k)]
                out["teacher_finish_reason"] = [got[j][1] for j in range(k)]
            store.append(out)
    finally:
        store.close()
        if answers_store is not None:
            answers_store.close()
    write_jsonl_atomic(failures, args.errors_path)

    complete = len(store.done) == len(rows)
    summary = {
        "rows": len(rows), "done": len(store.done), "resumed": resumed, "generated": len(store.done) - resumed,
        "failed": len(failed_rows), "failed_ids": failed_rows[:100],
        "truncated": sum(_truncated(r) for r in store.done.values()),
        "output": args.output if complete else None, "progress_file": str(args.progress_path),
        "errors_file": str(args.errors_path), "model": model,
    }  # fmt: skip
    if tools is not None:
        # A teacher that answered without calling a tool gives a one-message trajectory, written as it is; the
        # trainer reads it as a trajectory of its final turn alone (gad_trl.data.as_trajectory). Counted: many of
        # them mean the teacher did not use the tools (its system prompt, or the tools' descriptions).
        summary["answers_without_tool_calls"] = sum(
            not any(m.get("tool_calls") for m in trajectory)
            for r in store.done.values() for trajectory in ([r[column]] if k == 1 else r[column])
        )  # fmt: skip
        if summary["answers_without_tool_calls"]:
            logger.warning("%d trajectory(ies) end without any tool call (the teacher answered directly).",
                           summary["answers_without_tool_calls"])
    if k > 1:
        summary["answers_per_row"] = k
        summary["failed_answers"] = len(failures)
        summary["answers_file"] = str(args.answers_path)
    if complete:
        ordered = [store.done[key] for key, _ in rows]  # input order, whatever order they finished in
        if answer_filter is not None:
            ordered, rejected, summary["filter"] = filter_answers(ordered, answer_filter, args)
            write_jsonl_atomic(rejected, args.filtered_path)
            summary["filter"]["filtered_file"] = str(args.filtered_path)
            summary["filter"]["candidates_file"] = str(args.progress_path)
        if Path(args.output).suffix.lower() == ".jsonl":
            write_jsonl_atomic(ordered, args.output)
        else:
            from datasets import Dataset

            Dataset.from_list(ordered).to_parquet(args.output)
            if answer_filter is None:
                args.progress_path.unlink()
        if k > 1:
            args.answers_path.unlink(missing_ok=True)
        if args.push_to_hub:
            push_dataset(args.output, args.hub_dataset_id, args.hub_private)
            summary["pushed_to"] = args.hub_dataset_id
    return summary


def filter_answers(records: list[dict], keep_fn, args: TeacherGenerationArguments):
    """Best-of-N filtering of complete rows: each row keeps the answers `keep_fn(prompt_messages, answer)` passes (at
    most --keep_answers, in their order); returns (kept rows, rows with no passing answer, counts). A filter that
    raises stops the run with the row named: a broken filter must not silently drop the data set."""
    from ..data import prompt_messages, teacher_answers

    column, kept, rejected = args.teacher_response_column, [], []
    candidates = passed = 0
    for record in records:
        key = record.get(args.id_column)
        answers = teacher_answers(record[column])
        reasons = record.get("teacher_finish_reason")
        reasons = reasons if isinstance(reasons, list) else [reasons] * len(answers)
        prompt = prompt_messages(record, key)
        good = []
        for answer, reason in zip(answers, reasons):
            try:
                ok = keep_fn(prompt, answer)
            except Exception as err:
                raise ValueError(f"--answer_filter {args.answer_filter} raised on row {key!r}: {err!r}. Fix the "
                                 "filter; the candidates are kept and no request is repeated.") from err
            if not isinstance(ok, (bool, int)):
                raise ValueError(f"--answer_filter {args.answer_filter} returned {type(ok).__name__} on row {key!r}; "
                                 "it must return True (keep) or False (drop).")
            good += [(answer, reason)] if ok else []
        candidates += len(answers)
        passed += len(good)
        if not good:
            rejected.append(record)
            continue
        good = good[: args.keep_answers] if args.keep_answers else good
        out = dict(record)
        if args.keep_answers == 1:
            out[column], out["teacher_finish_reason"] = good[0]
        else:
            out[column] = [a for a, _ in good]
            out["teacher_finish_reason"] = [r for _, r in good]
        kept.append(out)
    counts = {"candidates": candidates, "passed": passed, "pass_rate": passed / candidates if candidates else 0.0,
              "rows_kept": len(kept), "rows_without_passing_answer": len(rejected)}
    if rejected:
        logger.warning("%d prompt(s) have no answer that passes --answer_filter; listed in %s.", len(rejected),
                       args.filtered_path)
    return kept, rejected, counts


def push_dataset(path: str, repo_id: str, private: bool = False) -> None:
    from ..data import load_any_dataset

    load_any_dataset(path)["train"].push_to_hub(repo_id, private=private)


def format_summary(summary: dict) -> str:
    k = summary.get("answers_per_row", 1)
    lines = [
        f"Teacher answers ({summary['model'] or 'no request needed'}): {summary['done']}/{summary['rows']} rows "
        + (f"of {k} answers " if k > 1 else "")
        + f"({summary['generated']} generated now, {summary['resumed']} from an earlier run), "
        f"{summary['failed']} failed, "
        + (f"{summary['truncated']} answer(s) " if k > 1 else f"{summary['truncated']} ")
        + "cut at max_tokens (teacher_finish_reason='length').",
    ]
    if summary.get("filter"):
        f = summary["filter"]
        lines.append(
            f"Answer filter: {f['passed']}/{f['candidates']} answers passed ({f['pass_rate']:.1%}); {f['rows_kept']} "
            f"prompt(s) kept, {f['rows_without_passing_answer']} without a passing answer (in {f['filtered_file']}). "
            f"Every candidate: {f['candidates_file']}."
        )
    if summary["output"]:
        lines.append(f"Written: {summary['output']}")
    if summary.get("answers_without_tool_calls"):
        lines.append(
            f"{summary['answers_without_tool_calls']} trajectory(ies) have no tool call (a final answer alone; the "
            "trainer takes them as trajectories without a call). Many of them mean the teacher ignored the tools: "
            "check --system_prompt and the tools' docstrings."
        )
    if summary["failed"]:
        lines.append(
            f"{summary['failed']} row(s) failed after retries (ids {summary['failed_ids'][:10]}...); their errors are "
            f"in {summary['errors_file']}. The rows done so far are in {summary['progress_file']}; run the same "
            "command again to retry the failed rows."
            + (f" The answers they already have are kept in {summary['answers_file']}; only the "
               f"{summary['failed_answers']} failed answer(s) are asked again." if k > 1 else "")
        )
    if summary.get("pushed_to"):
        lines.append(f"Pushed to the Hub: https://huggingface.co/datasets/{summary['pushed_to']}")
    return "\n".join(lines)
