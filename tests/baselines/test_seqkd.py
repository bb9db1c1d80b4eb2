"""`gad_trl.baselines.seqkd`: GAD rows as SeqKD's SFT examples, one per teacher answer, bad rows named."""

import pytest
from datasets import Dataset

from gad_trl.baselines.seqkd import to_seqkd_dataset
from gad_trl.data import GADDataError
from gad_trl.tiny import tiny_gad_rows


@pytest.mark.parametrize("fmt", ["conversational", "verl", "standard"])
def test_seqkd_conversion_to_prompt_completion(fmt):
    rows = tiny_gad_rows(3, seed=3, fmt=fmt)
    converted = to_seqkd_dataset(Dataset.from_list(rows))
    assert converted.column_names == ["prompt", "completion"]
    for row, out in zip(rows, converted):
        source = row.get("prompt", row.get("content"))
        expected_prompt = [{"role": "user", "content": source}] if isinstance(source, str) else source
        assert out["prompt"] == expected_prompt
        assert out["completion"] == [{"role": "assistant", "content": row["teacher_response"]}]


def test_seqkd_conversion_names_the_bad_row():
    rows = tiny_gad_rows(3, seed=3)
    rows[2]["teacher_response"] = "   "
    with pytest.raises(GADDataError, match=r"Row 2.*teacher_response"):
        to_seqkd_dataset(Dataset.from_list(rows))
