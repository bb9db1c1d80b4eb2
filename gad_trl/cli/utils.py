"""Helpers shared by the `gad-trl` subcommands: data set loading, SeqKD rows, the prompt-length filter.

Row and token helpers live in `gad_trl.data`."""

from __future__ import annotations

import os
from pathlib import Path

from ..data import prompt_messages, prompt_token_length, teacher_text

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
