"""Helpers shared by the `gad-trl` subcommands: data set loading and row conversion."""

from __future__ import annotations

import os
from pathlib import Path

FILE_BUILDERS = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".arrow": "arrow",
}


def load_any_dataset(dataset_name: str, dataset_config: str | None = None, streaming: bool = False):
    """Load a `DatasetDict` from a Hub id, a local directory or a single data file.

    - `.parquet` / `.json` / `.jsonl` / `.csv` / `.arrow` file: `load_dataset(<builder>, data_files=path)`, giving a
      `train` split; a `{split}` placeholder in the path (e.g. `data/{split}.parquet`) loads every split that exists.
    - a directory written by `save_to_disk`: `load_from_disk`;
    - any other directory (e.g. `train.parquet` + `test.parquet`) or a Hub id: `load_dataset(dataset_name, ...)`.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(os.path.expanduser(dataset_name))
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in FILE_BUILDERS:
        builder = FILE_BUILDERS[suffix]
        if "{split}" in str(path):
            data_files = {
                split: str(path).replace("{split}", split)
                for split in ("train", "validation", "test")
                if Path(str(path).replace("{split}", split)).exists()
            }
            if not data_files:
                raise FileNotFoundError(f"No file matches {dataset_name!r} for the splits train/validation/test.")
        else:
            if not path.exists():
                raise FileNotFoundError(f"Data file {dataset_name!r} does not exist.")
            data_files = str(path)
        return load_dataset(builder, data_files=data_files, streaming=streaming)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        ds = load_from_disk(str(path))
        return ds if isinstance(ds, DatasetDict) else DatasetDict({"train": ds})
    ds = load_dataset(dataset_name, name=dataset_config, streaming=streaming)
    if isinstance(ds, Dataset):
        ds = DatasetDict({"train": ds})
    return ds


def prompt_messages(row: dict, index: int | None = None) -> list[dict]:
    """The prompt of a GAD row as chat messages: TRL `prompt` (messages or text) or verl `content` (messages).

    Validation is `gad_trl.data`'s (the trainer's), so the CLI rejects exactly the rows the trainer rejects.
    """
    from ..data import PROMPT_COLUMN, VERL_PROMPT_COLUMN, GADDataError, normalize_prompt

    if row.get(PROMPT_COLUMN) is not None:
        column = PROMPT_COLUMN
    elif row.get(VERL_PROMPT_COLUMN) is not None:
        column = VERL_PROMPT_COLUMN
    else:
        raise GADDataError(f"Row {index}: no prompt; expected a 'prompt' (TRL) or 'content' (verl) column.")
    prompt = normalize_prompt(row[column], index, column)
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return prompt


def teacher_text(row: dict, column: str = "teacher_response", index: int | None = None) -> str:
    """The teacher's answer of a row as text; a missing or empty answer is an error naming the row and the column."""
    from ..data import GADDataError, normalize_teacher_response

    if column not in row:
        raise GADDataError(f"Row {index}: the teacher response column '{column}' is missing (columns: {sorted(row)}).")
    return normalize_teacher_response(row[column], index, column)


def to_seqkd_dataset(dataset, teacher_response_column: str = "teacher_response"):
    """Convert GAD rows to TRL's conversational prompt-completion format for `SFTTrainer` (SeqKD).

    `{"prompt": [messages], "completion": [{"role": "assistant", "content": teacher_response}]}`; other columns are
    dropped. Raises on the first row without a usable teacher response.
    """

    def convert(row, idx):
        return {
            "prompt": prompt_messages(row, idx),
            "completion": [{"role": "assistant", "content": teacher_text(row, teacher_response_column, idx)}],
        }

    return dataset.map(convert, with_indices=True, remove_columns=dataset.column_names)


def prompt_token_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of the chat-templated prompt with the generation prompt, as the student reads it."""
    if tokenizer.chat_template is None:
        return len(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def filter_long_prompts(dataset, tokenizer, max_prompt_length: int):
    """Rows whose templated prompt has at most `max_prompt_length` tokens; logs how many were dropped."""
    import logging

    keep = dataset.filter(
        lambda row, idx: prompt_token_length(tokenizer, prompt_messages(row, idx)) <= max_prompt_length,
        with_indices=True,
    )
    dropped = len(dataset) - len(keep)
    if dropped:
        logging.getLogger(__name__).warning(
            "Dropped %d of %d rows whose prompt is longer than max_prompt_length=%d tokens.",
            dropped, len(dataset), max_prompt_length,
        )
    if len(keep) == 0:
        raise ValueError(f"Every prompt is longer than max_prompt_length={max_prompt_length} tokens.")
    return keep
