"""Build a GAD training set from a black-box teacher: one chat completion per prompt from an OpenAI-compatible endpoint.

Rows come back in the trainer's format: the input row (its prompt column untouched) plus `teacher_response` (text),
`teacher_finish_reason` and the row id. The run is resumable with nothing lost: each finished row is appended to the
output JSONL (flushed and fsynced, `gad_trl.workflow.jsonl_store`); a restarted run with the same output skips the rows already
there, redoes a row torn by a kill, and retries the rows that failed. Rows that fail after the client's retries are
written, with their error, to `<output>.errors.jsonl` and counted in the summary; none is dropped silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

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
    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"help": "OpenAI-compatible endpoint (OpenAI: https://api.openai.com/v1; vLLM: http://HOST:PORT/v1)."},
    )
    model: str | None = field(
        default=None, metadata={"help": "Teacher model name. Default: the endpoint's only model (a vLLM server)."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Name of the environment variable holding the API key (the key itself is never logged or "
                  "saved). Unset: no key is sent."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message sent to the teacher before prompts that have none (not written to the "
                  "data set: the student trains on the prompt as it is)."},
    )
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature. Default: the server's."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling. Default: the server's."})
    max_tokens: int | None = field(default=None, metadata={"help": "Longest teacher answer, in tokens."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed, where the endpoint supports one."})
    extra_body: str | None = field(
        default=None,
        metadata={"help": "JSON object merged into each request body (endpoint-specific options, e.g. vLLM's "
                  "'{\"top_k\": 20}')."},
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    request_timeout: float = field(
        default=600.0,
        metadata={"help": "Total seconds one request attempt may take (connecting, sending, waiting for and reading "
                  "the whole answer, however slowly the server sends it); an attempt over it is abandoned, its "
                  "connection closed, and retried like other timeouts (--max_retries)."},
    )
    max_retries: int = field(
        default=5,
        metadata={"help": "Retries per request: 429 (honouring Retry-After), 5xx, timeouts, dropped connections and "
                  "malformed answers; then the row is listed as failed."},
    )
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
        if not self.request_timeout > 0:
            raise ValueError(f"--request_timeout must be > 0 seconds, got {self.request_timeout}.")
        if self.extra_body is not None:
            self.extra_body_dict()  # fail early on bad JSON

    def extra_body_dict(self) -> dict | None:
        return parse_json_object(self.extra_body, "--extra_body")

    @property
    def progress_path(self) -> Path:
        """The JSONL rows are appended to: the output itself, or `<output>.partial.jsonl` for Parquet."""
        out = Path(self.output)
        return out if out.suffix.lower() == ".jsonl" else out.with_name(out.name + ".partial.jsonl")

    @property
    def errors_path(self) -> Path:
        return Path(self.output).with_name(Path(self.output).name + ".errors.jsonl")

    @property
    def summary_path(self) -> Path:
        return Path(self.output).with_name(Path(self.output).name + ".summary.json")


def parse_json_object(text: str | None, name: str) -> dict | None:
    if text is None:
        return None
    if isinstance(text, dict):  # from a YAML config
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}.")
    return value


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


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


def generate_teacher(args: TeacherGenerationArguments, dataset=None, client=None) -> dict:
    """Run (or resume) the generation; returns the summary (counts, paths, failed ids)."""
    from ..data import normalize_teacher_response, prompt_messages
    from .jsonl_store import JsonlStore, write_jsonl_atomic
    from .openai_chat import chat, describe_error, make_client, map_bounded, resolve_model

    if dataset is None:
        dataset = load_prompts(args.dataset_name, args.dataset_config, args.dataset_split, args.max_samples)
    rows = keyed_rows(dataset, args.id_column)
    # Every prompt is validated (as the trainer does) before any request is sent.
    messages = {key: with_system_prompt(prompt_messages(row, key), args.system_prompt) for key, row in rows}

    store = JsonlStore(args.progress_path, args.id_column)
    known = {key for key, _ in rows}
    stale = [key for key in store.done if key not in known]
    if stale:
        store.close()
        raise ValueError(
            f"{args.progress_path} holds {len(stale)} row id(s) that are not in the prompts (e.g. {stale[:3]}): it "
            "was written from another data set or --max_samples. Use another --output, or the same inputs."
        )
    for key, row in rows:
        if key in store and not _same_prompt(store.done[key], row):
            store.close()
            raise ValueError(
                f"{args.progress_path}: row {key!r} was written for a different prompt than the data set's row "
                f"{key!r}. The prompts changed since the first run: use another --output."
            )
    resumed = len(store)
    pending = [(key, row) for key, row in rows if key not in store]
    if resumed:
        logger.info("Resuming: %d of %d rows already in %s.", resumed, len(rows), args.progress_path)

    if client is None:
        client = make_client(args.base_url, args.api_key_env, args.request_timeout, args.max_retries)
    model = resolve_model(client, args.model) if pending else args.model
    params = dict(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
                  extra_body=args.extra_body_dict())

    def ask(item):
        key, _ = item
        result = chat(client, model, messages[key], **params)
        # The trainer rejects empty teacher answers: such a row is a failure, listed, never written.
        normalize_teacher_response(result.text, key, args.teacher_response_column)
        return result

    failures = []
    try:
        for (key, row), result, error in map_bounded(ask, pending, args.concurrency, "teacher answers",
                                                      initial=resumed, total=len(rows)):
            if error is not None:
                failures.append({args.id_column: key, "error": describe_error(error, client)})
                logger.warning("Row %s failed: %s", key, failures[-1]["error"])
                continue
            out = dict(row)
            out[args.id_column] = row.get(args.id_column, key)
            out[args.teacher_response_column] = result.text
            out["teacher_finish_reason"] = result.finish_reason
            store.append(out)
    finally:
        store.close()
    write_jsonl_atomic(failures, args.errors_path)

    complete = len(store.done) == len(rows)
    summary = {
        "rows": len(rows), "done": len(store.done), "resumed": resumed, "generated": len(store.done) - resumed,
        "failed": len(failures), "failed_ids": [f[args.id_column] for f in failures][:100],
        "truncated": sum(r.get("teacher_finish_reason") == "length" for r in store.done.values()),
        "output": args.output if complete else None, "progress_file": str(args.progress_path),
        "errors_file": str(args.errors_path), "model": model,
    }  # fmt: skip
    if complete:
        ordered = [store.done[key] for key, _ in rows]  # input order, whatever order they finished in
        if Path(args.output).suffix.lower() == ".jsonl":
            write_jsonl_atomic(ordered, args.output)
        else:
            from datasets import Dataset

            Dataset.from_list(ordered).to_parquet(args.output)
            args.progress_path.unlink()
        if args.push_to_hub:
            push_dataset(args.output, args.hub_dataset_id, args.hub_private)
            summary["pushed_to"] = args.hub_dataset_id
    return summary


def push_dataset(path: str, repo_id: str, private: bool = False) -> None:
    from ..data import load_any_dataset

    load_any_dataset(path)["train"].push_to_hub(repo_id, private=private)


def format_summary(summary: dict) -> str:
    lines = [
        f"Teacher answers ({summary['model'] or 'no request needed'}): {summary['done']}/{summary['rows']} rows "
        f"({summary['generated']} generated now, {summary['resumed']} from an earlier run), "
        f"{summary['failed']} failed, "
        f"{summary['truncated']} cut at max_tokens (teacher_finish_reason='length').",
    ]
    if summary["output"]:
        lines.append(f"Written: {summary['output']}")
    if summary["failed"]:
        lines.append(
            f"{summary['failed']} row(s) failed after retries (ids {summary['failed_ids'][:10]}...); their errors are "
            f"in {summary['errors_file']}. The rows done so far are in {summary['progress_file']}; run the same "
            "command again to retry the failed rows."
        )
    if summary.get("pushed_to"):
        lines.append(f"Pushed to the Hub: https://huggingface.co/datasets/{summary['pushed_to']}")
    return "\n".join(lines)
