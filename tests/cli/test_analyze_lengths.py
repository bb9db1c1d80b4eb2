"""`gad-trl analyze-lengths` (`gad_trl.cli.analyze_lengths`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from datasets import Dataset

import gad_trl.cli.main as cli_main
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import SMUGGLED


def test_percentile_matches_numpy():
    import numpy as np

    from gad_trl.cli.analyze_lengths import percentile, suggest_max_length

    values = [3, 17, 5, 9, 1, 40, 22, 8]
    for q in (0, 25, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert suggest_max_length(values, 99, 64) == 64
    assert suggest_max_length([100, 130, 700], 50, 64) == 192  # p50 = 130 -> 3 x 64


def test_analyze_lengths_counts_teacher_tokens_with_eos(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from gad_trl.cli.analyze_lengths import percentile

    out_json = tmp_path / "lengths.json"
    argv = ["analyze-lengths", "--model_name_or_path", tiny_model_dir, "--dataset_name",
            str(Path(tiny_data_dir) / "train.jsonl"), "--round_to", "4", "--output_json", str(out_json)]
    assert cli_main.main(argv) == 0
    assert "Suggested max_completion_length" in capsys.readouterr().out
    report = json.loads(out_json.read_text())

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (Path(tiny_data_dir) / "train.jsonl").read_text().splitlines()]
    expected = [len(tokenizer(r["teacher_response"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
    stats = report["teacher_response_tokens"]
    assert stats["count"] == len(rows) and stats["max"] == max(expected) and stats["min"] == min(expected)
    assert stats["p95"] == pytest.approx(percentile(expected, 95))
    assert report["suggested_max_completion_length"] == 4 * math.ceil(percentile(expected, 99) / 4)
    assert report["prompt_tokens"]["min"] > 0


def test_analyze_lengths_counts_rows_with_special_token_strings(tok):
    from gad_trl.cli.analyze_lengths import AnalyzeLengthsArguments, analyze, format_report

    rows = tiny_gad_rows(6, seed=0)
    rows[2]["teacher_response"] = SMUGGLED
    report = analyze(AnalyzeLengthsArguments(model_name_or_path="tiny", dataset_name="rows"), tok,
                     Dataset.from_list(rows))
    assert report["teacher_rows_with_special_token_strings"] == 1
    assert report["teacher_special_token_rows_first"] == [2]
    assert "encodes them as plain text" in format_report(report)

