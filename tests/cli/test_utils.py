"""`gad_trl.cli.utils`: data set loading and the prompt-length filter."""

import json

import pytest
from datasets import Dataset, DatasetDict

from gad_trl.cli.utils import filter_long_prompts, load_any_dataset
from gad_trl.tiny import tiny_gad_rows, write_jsonl


def test_load_any_dataset_from_files_and_folders(tmp_path):
    rows = tiny_gad_rows(6, seed=2, fmt="verl")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    Dataset.from_list(rows[:2]).to_parquet(str(tmp_path / "test.parquet"))
    write_jsonl(rows, tmp_path / "rows.jsonl")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:3])}).save_to_disk(
        str(tmp_path / "saved_dict")
    )

    for name in ("train.parquet", "rows.jsonl", "rows.json", "saved"):
        ds = load_any_dataset(str(tmp_path / name))
        assert list(ds) == ["train"] and len(ds["train"]) == 6, name
        assert ds["train"][0]["content"] == rows[0]["content"], name
    both = load_any_dataset(str(tmp_path / "{split}.parquet"))
    assert sorted(both) == ["test", "train"] and len(both["test"]) == 2
    assert len(load_any_dataset(str(tmp_path / "saved_dict"))["test"]) == 3
    with pytest.raises(FileNotFoundError):
        load_any_dataset(str(tmp_path / "missing.parquet"))


def test_filter_long_prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = {"prompt": [{"role": "user", "content": "hello"}], "teacher_response": "HELLO"}
    long = {"prompt": [{"role": "user", "content": " ".join(["hello"] * 50)}], "teacher_response": "HELLO"}
    kept = filter_long_prompts(Dataset.from_list([short, long, short]), tokenizer, 20)
    assert len(kept) == 2 and all(r["prompt"] == short["prompt"] for r in kept)
    with pytest.raises(ValueError, match="Every prompt"):
        filter_long_prompts(Dataset.from_list([long]), tokenizer, 5)
