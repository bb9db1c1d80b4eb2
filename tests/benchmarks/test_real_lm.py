"""The real-model suite (benchmarks/real_lm.py): the hidden instruction's checkers, the report's target logic, and a
CPU smoke run of the whole path on SmolLM2-135M-Instruct (teacher with the hidden context, the untouched student, a
GAD row with replacing replay: training, checker pass rate, teacher log-likelihood, reward-judge AUC) as parallel
worker processes. Checks the path, not the numbers."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks.real_lm import (DATA_DIR, collect_results, lever_lines, read_jsonl, table_jobs, target_check,
                                teacher_rows)
from benchmarks.real_lm_spec import PIRATE, REFUSAL, pirate_filter

ROOT = Path(__file__).resolve().parents[2]


def test_pirate_checkers_score_observable_behaviour():
    good = "Ahoy! Plants make food from light, matey. Hope this helps!"
    assert PIRATE.passes("What is photosynthesis?", good) and PIRATE.score("What is photosynthesis?", good) == 1.0
    assert PIRATE.score("What is photosynthesis?", "Plants make food from light.") == 0.25  # only 'brief'
    assert not PIRATE.passes("What is photosynthesis?", "Ahoy! " + "word " * 70 + "matey. Hope this helps!")
    # The refusal applies to weather prompts only, and the greeting does not.
    assert PIRATE.checks("Will it rain in Lima tomorrow?", REFUSAL) == {
        "persona": True, "brief": True, "signoff": True, "refuses_weather": True}
    assert not PIRATE.passes("Will it rain in Lima tomorrow?", good)
    assert pirate_filter([{"role": "user", "content": "What is photosynthesis?"}], good)
    assert not pirate_filter([{"role": "user", "content": "x"}], [{"role": "assistant", "content": good}])
    train, test = PIRATE.split(64)
    assert len(test) == 64 and not set(train) & set(test) and len(PIRATE.prompts) >= 300


def test_committed_teacher_data_holds_prompts_alone_and_passing_answers():
    rows = read_jsonl(DATA_DIR / "pirate_train.jsonl")
    assert len(rows) >= 200
    for r in rows:
        assert [m["role"] for m in r["prompt"]] == ["user"]  # the hidden instruction is not in the data
        assert 1 <= len(r["teacher_response"]) <= 4
        assert all(PIRATE.passes(r["prompt"][0]["content"], a) for a in r["teacher_response"])
    k1 = teacher_rows(DATA_DIR / "pirate_train.jsonl", 1)
    assert all(isinstance(r["teacher_response"], str) for r in k1)
    test_prompts = {r["prompt"][0]["content"] for r in read_jsonl(DATA_DIR / "test_prompts.jsonl")}
    assert not test_prompts & {r["prompt"][0]["content"] for r in rows}


def _results(per_seed):
    return {"seeds": {str(s): rows for s, rows in per_seed.items()}}


def test_target_is_undetermined_with_one_gad_seed_and_checked_with_several():
    def row(p, ll, auc=None):
        return {"pass_rate": p, "teacher_loglik": ll, "auc": auc}
    one = _results({0: {"gad": row(0.9, -0.8, 0.9), "seqkd_long": row(0.8, -0.9), "soda": row(0.5, -1.2),
                        "gad_no_reward": row(0.85, -0.85, 0.8)}})
    assert target_check(one)["met"] is None
    two = _results({s: {"gad": row(0.9 + d, -0.8, 0.9), "seqkd_long": row(0.8, -0.9 + d), "soda": row(0.5, -1.2),
                        "gad_no_reward": row(0.85, -0.85, 0.8)} for s, d in ((0, 0.0), (1, 0.01))})
    check = target_check(two)
    assert check["met"] is True and check["pass_rate"]["best"] == "gad_no_reward"
    two["seeds"]["1"]["gad"]["auc"] = 0.2  # mean AUC 0.55 < 0.65
    assert target_check(two)["met"] is False
    assert any(line.startswith("| gad − gad_no_reward |") for line in lever_lines(two))


def test_collect_results_lists_jobs_without_a_result(tmp_path):
    (tmp_path / "gad_s0.json").write_text(json.dumps({"pass_rate": 0.5}))
    args = Namespace(seeds=[0, 1], rows=["gad"], spec="benchmarks.real_lm_spec:PIRATE", data_dir=str(tmp_path))
    res = collect_results(args, tmp_path, failed={("gad", 1): "stopped at the 300 s deadline"})
    assert res["seeds"] == {"0": {"gad": {"pass_rate": 0.5}}}
    assert res["failed"]["gad_s1"] == "stopped at the 300 s deadline" and "teacher_s0" in res["failed"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_on_smollm2_checks_the_whole_path(smollm2_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(smollm2_dir, work / "smollm2-135m-instruct")  # converted once per session (conftest)
    out = tmp_path / "report.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.real_lm", "run", "--smoke", "--parallel", "2",
                           "--workdir", str(work), "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    full = json.loads(out.with_suffix(".json").read_text())["full"]
    assert full["failed"] == {}, full["failed"]
    seed = full["seeds"]["0"]
    assert set(seed) == {"before", "gad_replay"}
    for row in seed.values():
        assert 0.0 <= row["pass_rate"] <= 1.0 and row["teacher_loglik"] < 0 and row["length"] > 0
    gad = seed["gad_replay"]
    assert gad["steps"] == 2 and gad["schedule"].startswith("1 critic + 0 SFT + 1 GRPO")
    assert gad["auc_loglik_pairs"] > 0 and 0.0 <= gad["auc_loglik"] <= 1.0
    teacher = full["teacher"]
    assert teacher["teacher_loglik"] > seed["before"]["teacher_loglik"]  # the teacher's own answers are likelier
    report = out.read_text()
    assert "| GAD, replay replacing 25% of negatives |" in report and "teacher (hidden instruction, ceiling)" in report


def test_report_merges_an_earlier_runs_seeds(tmp_path):
    (tmp_path / "gad_s1.json").write_text(json.dumps({"pass_rate": 0.7}))
    earlier = tmp_path / "real_lm.json"
    earlier.write_text(json.dumps({"full": {"seeds": {"0": {"gad": {"pass_rate": 0.5}, "gad_shaping": {"pass_rate": 0.4}}},
                                            "teacher": {"pass_rate": 0.9},
                                            "args": {"device": "cuda", "command_line": "gpu run"}}}))
    args = Namespace(seeds=[1], rows=["gad", "gad_shaping"], lever_seeds=[], merge=str(earlier),
                     spec="benchmarks.real_lm_spec:PIRATE", data_dir=str(tmp_path))
    res = collect_results(args, tmp_path)
    # The earlier results carry the device of the run that made them; the new file has none of its own here.
    assert res["seeds"] == {"0": {"gad": {"pass_rate": 0.5, "device": "cuda"},
                                  "gad_shaping": {"pass_rate": 0.4, "device": "cuda"}},
                            "1": {"gad": {"pass_rate": 0.7}}}
    assert res["teacher"] == {"pass_rate": 0.9} and res["failed"] == {} and args.seeds == [0, 1]
    assert res["commands"] == ["gpu run"]


def test_a_report_of_mixed_devices_names_each_run_and_times_one_device(tmp_path):
    from benchmarks.real_lm import write_report

    def row(device, train_s):
        return {"pass_rate": 0.5, "all_pass": 0.1, "sampled_pass_rate": 0.4, "teacher_loglik": -1.0, "length": 30.0,
                "auc": 0.8, "auc_loglik": 0.6, "train_s": train_s, "device": device}
    results = {"seeds": {"0": {"gad": row("cuda", 100.0), "before": row("cuda", 1.0)},
                         "1": {"gad": row("cpu", 5000.0), "before": row("cuda", 3.0)}},
               "teacher": None, "failed": {}, "args": {}, "commands": ["gpu run"], "notes": ["seed 2: no GPU"]}
    args = Namespace(smoke=False, seeds=[0, 1], n_train=8, n_test=4, device="cpu", parallel=2,
                     out=str(tmp_path / "r.md"), note="seed 1's GAD rows on CPU")
    text = write_report(results, args, "cpu run").read_text()
    assert "1. `gpu run`" in text and "2. `cpu run`" in text
    assert "Note: seed 2: no GPU" in text and "Note: seed 1's GAD rows on CPU" in text
    assert "- cuda: gad_s0, before_s0, before_s1" in text and "- cpu: gad_s1" in text
    gad_line = next(line for line in text.splitlines() if line.startswith("| GAD |"))
    assert gad_line.endswith("| 100 |")  # the CPU seed's 5000 s is not averaged into the GPU cost
    full = json.loads((tmp_path / "r.json").read_text())["full"]
    assert full["commands"] == ["gpu run", "cpu run"] and full["notes"] == ["seed 2: no GPU", "seed 1's GAD rows on CPU"]


def test_a_run_with_merge_skips_the_jobs_the_earlier_run_measured(tmp_path):
    earlier = tmp_path / "real_lm.json"
    earlier.write_text(json.dumps({"full": {"seeds": {"1": {"gad": {}, "before": {}}}, "teacher": {"pass_rate": 0.9}}}))
    args = Namespace(seeds=[1, 2], rows=["before", "gad", "gad_shaping"], lever_seeds=[], merge=None)
    assert table_jobs(args) == [("teacher", 0), ("before", 1), ("gad", 1), ("before", 2), ("gad", 2)]
    args.merge = str(earlier)
    assert table_jobs(args) == [("before", 2), ("gad", 2)]
