"""The GPU check (benchmarks/gpu_check.py) in its CPU tiny mode, end to end: the shipped recipes through `gad-trl gad`'s
parser and trainer builder in a worker process each, the estimate for the same arguments, the step split and the
report. Checks the path, not the numbers (there is no CUDA memory to compare on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import CASES, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_cases_run_end_to_end(tmp_path):
    pytest.importorskip("bitsandbytes")  # the QLoRA recipe's 4-bit base (nf4 runs on CPU)
    out = tmp_path / "gpu_tiny"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--cases", "qwen2.5-7b-qlora",
         "qwen2.5-1.5b-replicated", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["case"]: r for r in report["cases"]}
    assert {name: r["mode"] for name, r in rows.items()} == {
        "qwen2.5-7b-qlora": "shared_base_qlora", "qwen2.5-1.5b-replicated": "replicated"}
    for r in rows.values():
        assert r["status"] == "ok" and r["steps"] == 2
        assert r["estimate_gib"] > 0 and r["estimate_phase"]
        assert set(r["split_s"]) == {"generation", "weight sync", "discriminator", "policy"}
        assert r["split_s"]["generation"] > 0 and r["split_s"]["discriminator"] > 0
        assert r["completion_tokens_per_step"] > 0 and r["tokens_per_s"] > 0
        assert r["peak_allocated_gib"] is None  # CPU: no CUDA memory, so no ratio
    text = out.with_suffix(".md").read_text()
    assert "| qwen2.5-7b-qlora | shared_base_qlora |" in text and "Tiny shape on CPU" in text


def test_cases_past_the_deadline_are_skipped_not_started(tmp_path):
    from benchmarks.gpu_check import main

    out = tmp_path / "skipped"
    assert main(["--tiny", "--deadline-s", "0", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["cases"]
    assert [r["case"] for r in rows] == [c.name for c in CASES]
    assert all(r["status"] == "skipped" and "deadline" in r["detail"] for r in rows)
    assert not (tmp_path / "w" / "models").exists()  # nothing was built


def test_failed_case_is_reported_with_its_error():
    row = summarize(CASES[0], {"status": "failed", "detail": "ImportError: bitsandbytes"})
    assert row == {"case": CASES[0].name, "shape": CASES[0].shape, "recipe": CASES[0].recipe,
                   "flags": list(CASES[0].flags), "status": "failed", "detail": "ImportError: bitsandbytes"}


def test_real_shape_model_has_the_real_vocabulary_and_the_tiny_tokenizer(tmp_path):
    """The GPU path's model builder on CPU, one layer of Qwen2.5-0.5B: its real widths and 151,936-token vocabulary,
    the offline tokenizer's end-of-turn and pad ids, loadable by transformers."""
    from transformers import AutoConfig, AutoTokenizer

    from benchmarks.gpu_check import save_shaped_model
    from gad_trl.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    path = save_shaped_model(tmp_path / "m", "Qwen/Qwen2.5-0.5B-Instruct", tok, "cpu", num_hidden_layers=1)
    config = AutoConfig.from_pretrained(path)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (151936, 896, 4864)
    assert config.eos_token_id == tok.eos_token_id and config.pad_token_id == tok.pad_token_id
    assert len(AutoTokenizer.from_pretrained(path)) == len(tok)
