"""Smoke tests of the benchmark suite's task API and judges (no training, a few seconds)."""

import random

import pytest

from benchmarks.tasks import TASKS, corrupt, get_tasks, make_split, register_task, tokens, truncate


def test_registry_has_three_tasks_of_different_kinds():
    assert {"reverse", "numbered_list", "arithmetic"} <= set(TASKS)


@pytest.mark.parametrize("name", ["reverse", "numbered_list", "arithmetic"])
def test_teacher_answers_score_one_and_perturbed_ones_less(name):
    task = TASKS[name]
    rng = random.Random(0)
    perturbed = []
    for _ in range(50):
        prompt, answer = task.make_example(rng)
        assert task.judge(prompt, answer) == 1.0, (prompt, answer)
        assert 0.0 <= task.judge(prompt, "") < 1.0
        perturbed.append(task.judge(prompt, truncate(corrupt(answer, rng))))
        assert 0.0 <= perturbed[-1] <= 1.0
    assert sum(perturbed) / len(perturbed) < 0.9


def test_teacher_answers_survive_the_tiny_tokenizer_round_trip():
    from gad_trl.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rng = random.Random(1)
    for task in get_tasks():
        for _ in range(10):
            prompt, answer = task.make_example(rng)
            ids = tok(answer, add_special_tokens=False).input_ids
            assert tok.unk_token_id is None or tok.unk_token_id not in ids
            assert task.judge(prompt, tok.decode(ids, skip_special_tokens=True)) == 1.0


def test_reverse_accepts_every_style_and_rejects_wrong_order():
    judge = TASKS["reverse"].judge
    p = "reverse : water house light"
    for ans in ("light house water", "light , house , water", "result : light house water", "light, house, water"):
        assert judge(p, ans) == 1.0, ans
    assert judge(p, "water house light") < 1.0
    assert judge(p, "result : light , house water") < 1.0


def test_arithmetic_partial_credit():
    judge = TASKS["arithmetic"].judge
    p = "sum 3 plus 4 plus 5"
    assert judge(p, "3 plus 4 equals 7 , 7 plus 5 equals 12 , so the answer is 12") == 1.0
    assert judge(p, "3 plus 4 equals 7 , 7 plus 5 equals 1 2 , so the answer is 1 2") == 1.0  # digit tokens
    assert judge(p, "3 plus 4 equals 7 , 7 plus 5 equals 12 , so the answer is") == 0.5
    assert judge(p, "so the answer is 12") == 0.5
    assert tokens("1 2 plus 3") == ["12", "plus", "3"]


def test_numbered_list_counts_lines():
    judge = TASKS["numbered_list"].judge
    p = "list : water house"
    assert judge(p, "1 . water\n2 . house") == 1.0
    assert judge(p, "1. water \n 2. house") == 1.0
    assert judge(p, "1 . water") == 0.5
    assert judge(p, "1 . water\n2 . house\n3 . light") == pytest.approx(2 / 3)


def test_a_new_task_plugs_in_as_one_function_pair():
    def make(rng):
        w = rng.choice(["up", "down"])
        return f"say {w}", w

    def judge(prompt, answer):
        return float(answer.strip() == prompt.split()[-1])

    try:
        register_task("echo_test", make, judge)
        (task,) = get_tasks("echo_test")
        rows = make_split([task], 2, seed=0)
        assert len(rows) == 2 and rows[0]["prompt"][0]["role"] == "user"
        assert all(task.judge(r["prompt_text"], r["teacher_response"]) == 1.0 for r in rows)
    finally:
        TASKS.pop("echo_test", None)


def test_splits_are_disjoint_and_deterministic():
    tasks = get_tasks()
    train = make_split(tasks, 20, seed="train")
    assert train == make_split(tasks, 20, seed="train")
    held = make_split(tasks, 20, seed="eval", exclude={r["prompt_text"] for r in train})
    assert not {r["prompt_text"] for r in train} & {r["prompt_text"] for r in held}
    assert {r["task"] for r in train} == {t.name for t in tasks}


def test_a_small_task_cannot_leak_train_prompts_into_held_out_rows():
    from benchmarks.tasks import Task, check_held_out

    tiny = Task("two_prompts", lambda rng: (rng.choice(["say up", "say down"]), "ok"), lambda p, a: 1.0)
    train = make_split([tiny], 2, seed="train")
    held_out = make_split([tiny], 2, seed="eval", exclude={r["prompt_text"] for r in train})
    with pytest.raises(ValueError, match="two_prompts have too few distinct prompts.*--n-eval"):
        check_held_out({r["prompt_text"] for r in train}, held_out, "--n-eval")
    check_held_out({"never asked"}, held_out, "--n-eval")  # disjoint: fine


def test_k_answers_are_distinct_where_the_teacher_has_them_and_repeated_otherwise():
    from benchmarks.tasks import with_k_answers

    tasks = {t.name: t for t in get_tasks()}
    rows = make_split(get_tasks(), 10, seed="train")
    k_rows, stats = with_k_answers(rows, tasks, 4)
    assert k_rows == with_k_answers(rows, tasks, 4)[0]  # deterministic
    for r, kr in zip(rows, k_rows):
        answers = kr["teacher_response"]
        assert len(answers) == 4 and answers[0] == r["teacher_response"]
        assert all(tasks[r["task"]].judge(r["prompt_text"], a) == 1.0 for a in answers)
        # reverse has 3 valid styles: 3 distinct + 1 repeat; the others one answer, repeated.
        assert len(set(answers)) == (3 if r["task"] == "reverse" else 1)
    assert stats["rows"] == 30 and stats["rows_with_duplicates"] == 30
    assert stats["per_task"] == {"reverse": 3.0, "numbered_list": 1.0, "arithmetic": 1.0}
    _, two = with_k_answers(rows, tasks, 2)
    assert two["per_task"]["reverse"] == 2.0 and two["rows_with_duplicates"] == 20


def test_pretrain_lr_rule_keeps_width_128_and_scales_above():
    from benchmarks.common import pretrain_lr

    assert pretrain_lr(128, steps=800) == (2e-3, 50) == pretrain_lr(64, steps=800)
    assert pretrain_lr(512, steps=800) == (5e-4, 200)
    assert pretrain_lr(512, steps=100) == (5e-4, 50)  # warm-up capped at a quarter of the steps (at least 50)
    assert pretrain_lr(512, "fixed") == (2e-3, 50)


def _fake_results(values):
    """A results dict as benchmarks.quality writes it: {method: [(greedy, sampled), per seed]}."""
    seeds = {}
    for m, per_seed in values.items():
        for s, (g, smp) in enumerate(per_seed):
            seeds.setdefault(str(s), {})[m] = {"mean": g, "sampled": smp, "train_cpu_s": 1.0, "d_judge_auc": 0.7}
    return {"seeds": seeds}


def test_target_check_needs_a_margin_above_the_larger_std_and_the_auc():
    from benchmarks.quality import target_check

    methods = ["seqkd_long", "soda", "gad_no_reward", "gad"]
    base = {"seqkd_long": [(0.40, 0.20), (0.42, 0.22)], "soda": [(0.41, 0.20), (0.41, 0.20)],
            "gad_no_reward": [(0.40, 0.21), (0.40, 0.21)]}
    win = target_check(_fake_results({**base, "gad": [(0.50, 0.30), (0.51, 0.31)]}), methods)
    assert win["met"] and win["mean"]["best"] == "seqkd_long" and win["auc"]["mean"] == 0.7
    lose = target_check(_fake_results({**base, "gad": [(0.45, 0.30), (0.38, 0.31)]}), methods)
    assert not lose["met"] and not lose["mean"]["met"] and lose["sampled"]["met"]
    assert target_check(_fake_results(base), methods[:3]) is None


def test_soda_row_trains_on_a_tiny_student(tmp_path):
    import argparse

    from benchmarks.common import build_tokenizer
    from benchmarks.quality import run_soda
    from gad_trl.tiny import save_tiny_model

    tok = build_tokenizer()
    start = save_tiny_model(tmp_path / "start", tokenizer=tok, hidden_size=32, num_layers=1)
    rows = make_split(get_tasks(), 2, seed="train")
    args = argparse.Namespace(prompts_per_step=4, soda_epochs=1.0, soda_lr=1e-4, soda_beta=0.1, soda_temperature=1.0,
                              max_completion_length=8)
    model, info = run_soda(start, tok, rows, args, 0, str(tmp_path / "soda"))
    assert info["pairs"] == 6 and info["steps"] == 2 and info["train_cpu_s"] >= info["sample_cpu_s"] > 0
    assert (tmp_path / "soda" / "_soda_rejected.jsonl").exists()


def test_size_trend_table_reads_one_run_per_width(tmp_path):
    import json

    from benchmarks.quality import parse_args, size_trend

    paths = []
    for h, gad in ((512, 0.5), (128, 0.4)):
        seed = {m: {"mean": v, "sampled": v / 2, "train_cpu_s": 10.0, "d_judge_auc": 0.6}
                for m, v in (("gad", gad), ("seqkd_long", 0.3), ("gad_no_reward", 0.35))}
        seed["pretrain"] = {"final_loss": 0.5, "lr": 2e-3 * 128 / h, "warmup_steps": 50 * h // 128,
                            "loss_curve": [1.0] * 16}
        path = tmp_path / f"size_{h}.json"
        path.write_text(json.dumps({"args": {"hidden_size": h, "n_train": 96, "pretrain_steps": 800},
                                    "seeds": {"0": seed}}))
        paths.append(str(path))
    before = tmp_path / "before.json"
    before.write_text(json.dumps({"widths": {"512": {"final_loss": None, "stopped_at_step": 350,
                                                     "window": [300, 350], "window_loss": 1.17}}}))
    out = tmp_path / "trend.md"
    args = parse_args(["--size-trend", *paths, "--pretrain-before", str(before), "--out", str(out)])
    size_trend(args)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 128 |") or line.startswith("| 512 |")]
    assert rows[0].startswith("| 128 |") and "0.100 ± 0.000" in rows[0]  # GAD - SeqKD-long at 128
    assert "0.200 ± 0.000" in rows[1] and "0.150 ± 0.000" in rows[1]  # at 512: vs SeqKD-long, vs gad_no_reward
    assert "stopped at step 350" in text and "the rules agree" in text
