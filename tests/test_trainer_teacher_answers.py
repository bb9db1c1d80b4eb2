"""k teacher answers per prompt (lists in the teacher column) and the reward shaping of the discriminator's score."""

import json
import math

import pytest
import torch
from datasets import Dataset

from gad_trl.data import GADDataError, prepare_gad_dataset, teacher_answers
from gad_trl.discriminator.inputs import Pairs, sft_teacher_per_row
from gad_trl.discriminator.losses import LOSS_TYPES, discriminator_loss
from gad_trl.discriminator.shaping import RewardShaping
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import make_trainer, params_of, same_params


def k_rows(n=8, k=3):
    """Rows whose teacher column holds k different answers (the first = the row's own), k varying: 1 on odd rows (an
    Arrow column holds one type: lists throughout, of varying length)."""
    rows = tiny_gad_rows(n, seed=0)
    others = [r["teacher_response"] for r in tiny_gad_rows(n + k, seed=5)]
    for i, row in enumerate(rows):
        row["teacher_response"] = [row["teacher_response"], *others[i:i + k - 1]] if i % 2 == 0 else [row["teacher_response"]]
    return rows


# ------------------------------------------------------------------ data
def test_rows_with_k_answers_become_a_list_column_and_one_answer_stays_a_string():
    rows = k_rows(4, k=3)
    rows[2]["teacher_response"] = ["A", "B"]
    ds = prepare_gad_dataset(Dataset.from_list(rows))
    values = ds["teacher_response"]
    messages = [{"prompt": "q", "teacher_response": [{"role": "assistant", "content": "A"},
                                                     {"role": "assistant", "content": "B"}]}]
    assert prepare_gad_dataset(Dataset.from_list(messages))["teacher_response"] == [["A", "B"]]
    assert [len(v) for v in values] == [3, 1, 2, 1] and values[2] == ["A", "B"]
    assert all(isinstance(a, str) for v in values for a in v)
    single = prepare_gad_dataset(Dataset.from_list(tiny_gad_rows(3, seed=0)))
    assert all(isinstance(v, str) for v in single["teacher_response"])
    assert teacher_answers("x") == ["x"] and teacher_answers(["x", "y"]) == ["x", "y"]


def test_a_tool_calling_message_is_not_taken_for_an_answer():
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}
    with pytest.raises(GADDataError, match="tool call without a function name"):
        prepare_gad_dataset(Dataset.from_list([{"prompt": "q", "teacher_response": [call]}]))
    with pytest.raises(GADDataError, match="give the whole trajectory as a list"):
        prepare_gad_dataset(Dataset.from_list([{"prompt": "q", "teacher_response": dict(call, tool_calls=[
            {"type": "function", "function": {"name": "f", "arguments": "{}"}}])}]))


# ------------------------------------------------------------------ loss
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_pairs_weighted_one_over_k_make_each_completion_count_once(loss_type):
    torch.manual_seed(0)
    teacher = torch.randn(3)  # prompt 0 has answers 0, 1; prompt 1 has answer 2
    student = torch.randn(4)  # completions 0, 1 of prompt 0; 2, 3 of prompt 1
    pairs = Pairs.from_groups([[0, 1], [0, 1], [2], [2]], "cpu")
    assert pairs.teacher.tolist() == [0, 1, 0, 1, 2, 2] and pairs.student.tolist() == [0, 0, 1, 1, 2, 3]
    loss, info = discriminator_loss(*pairs.scores(torch.cat([teacher, student]), 3), loss_type, weights=pairs.weight)
    # By hand: each completion's loss averaged over its prompt's answers, then the mean over completions.
    per_completion = []
    for i, group in enumerate([[0, 1], [0, 1], [2], [2]]):
        losses = [discriminator_loss(teacher[[t]], student[[i]], loss_type)[0] for t in group]
        per_completion.append(sum(losses) / len(losses))
    if loss_type != "balanced":  # balanced's score regulariser is not a per-pair mean of a single pair's value
        assert torch.allclose(loss, torch.stack(per_completion).mean(), atol=1e-6)
    accuracy = sum(sum(float(teacher[t] > student[i]) for t in g) / len(g)
                   for i, g in enumerate([[0, 1], [0, 1], [2], [2]])) / 4
    assert math.isclose(info["accuracy"], accuracy, abs_tol=1e-6)
    assert math.isclose(info["student_score_mean"], student.mean().item(), abs_tol=1e-6)


def test_one_answer_a_prompt_is_the_unweighted_paper_loss():
    pairs = Pairs.from_groups([[0], [0], [1]], "cpu")
    assert pairs.weight is None and pairs.teacher.tolist() == [0, 0, 1]


# ------------------------------------------------------------------ trainer
def test_every_completion_meets_every_answer_each_answer_scored_once(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, rows=k_rows(8, k=3), max_steps=2, per_device_train_batch_size=8,
                           num_generations=4, sft_loss_coef=0.5)
    calls = []
    update = trainer.discriminator_component.update

    def spy(batch, step):
        calls.append((len(batch.teacher_seqs), len(batch.student_seqs), batch.pairs))
        return update(batch, step)

    trainer.discriminator_component.update = spy
    disc0 = params_of(trainer.discriminator)
    trainer.train()
    assert not same_params(disc0, params_of(trainer.discriminator))
    assert len(calls) == 2
    for num_teacher, num_student, pairs in calls:
        assert num_student == 8
        # 2 prompts a batch; each has 3 answers (even rows) or 1 (odd rows): scored once each, not once per completion.
        groups = {}
        for t, i in zip(pairs.teacher.tolist(), pairs.student.tolist()):
            groups.setdefault(i, []).append(t)
        sizes = sorted(len(g) for g in groups.values())
        assert num_teacher == sum(set(sizes)) or num_teacher == 2 * sizes[0]  # unique answers of the batch's prompts
        assert len(pairs) == sum(sizes)
        weights = pairs.weight.tolist() if pairs.weight is not None else [1.0] * len(pairs)
        for i, g in groups.items():  # each completion's pairs weigh 1 in total
            assert math.isclose(sum(w for w, s in zip(weights, pairs.student.tolist()) if s == i), 1.0, abs_tol=1e-6)
    logged = [h for h in trainer.state.log_history if "discriminator/teacher_answers_per_prompt" in h]
    assert logged and all(h["discriminator/teacher_answers_per_prompt"] in (1.0, 2.0, 3.0) for h in logged)
    assert any("sft/loss" in h for h in trainer.state.log_history)


def test_sft_rows_of_a_prompt_take_its_answers_in_turn():

    assert sft_teacher_per_row([[0, 1, 2]] * 4 + [[3]] * 2) == [0, 1, 2, 0, 3, 3]


def test_seqkd_trains_on_every_answer():
    from gad_trl.baselines.seqkd import to_seqkd_dataset

    ds = to_seqkd_dataset(Dataset.from_list(k_rows(4, k=3)))
    assert len(ds) == 3 + 1 + 3 + 1
    assert [m[0]["content"] for m in ds["completion"][:3]] == k_rows(4, k=3)[0]["teacher_response"]


def test_heldout_triples_with_k_answers_weigh_each_answer_one_over_k(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1)
    rows = tiny_gad_rows(2, seed=3)
    triples = [{"prompt": rows[0]["prompt"], "teacher_response": [rows[0]["teacher_response"], rows[1]["teacher_response"]],
                "student_response": "A B", "student_finished": True},
               {"prompt": rows[1]["prompt"], "teacher_response": rows[1]["teacher_response"],
                "student_response": "C", "student_finished": True}]
    evaluate = trainer.discriminator_component.evaluate_triples
    both = evaluate(triples)
    singles = [evaluate([dict(triples[0], teacher_response=a)]) for a in triples[0]["teacher_response"]]
    last = evaluate([triples[1]])
    assert both["num_pairs"] == 2 and len(both["teacher_scores"]) == 3
    expected = ((singles[0]["score_diff"] + singles[1]["score_diff"]) / 2 + last["score_diff"]) / 2
    assert math.isclose(both["score_diff"], expected, rel_tol=1e-5, abs_tol=1e-6)


# ------------------------------------------------------------------ reward shaping
def test_reward_shaping_formula_and_validation():
    shaping = RewardShaping(0.5, 1.0)
    out = shaping(torch.tensor([3.0, 0.2, -4.0]), [0, 9, 1])
    assert torch.allclose(out, torch.tensor([1.0, 0.2 - 0.5 * math.log(10), -1.0]))
    assert not RewardShaping().active
    with pytest.raises(ValueError, match="discriminator_length_penalty"):
        RewardShaping(-1.0)
    with pytest.raises(ValueError, match="discriminator_score_clip"):
        RewardShaping(0.0, 0.0)


def test_config_rejects_bad_shaping_values(tmp_path):
    from tests.helpers.gad_helpers import make_args

    with pytest.raises(ValueError, match="discriminator_length_penalty"):
        make_args(tmp_path, discriminator_length_penalty=float("nan"))
    with pytest.raises(ValueError, match="discriminator_score_clip"):
        make_args(tmp_path, discriminator_score_clip=-2.0)


def test_shaped_rewards_reach_grpo_and_the_discriminator_loss_reads_raw_scores(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_length_penalty=0.3,
                           discriminator_score_clip=0.05, save_strategy="no")
    seen = {}
    update = trainer.discriminator_component.update

    def spy(batch, step):
        raw, info = update(batch, step)
        starts = batch.response_starts[batch.num_teacher:]
        seen["raw"], seen["lengths"] = raw.clone(), [len(s) - st for s, st in zip(batch.student_seqs, starts)]
        return raw, info

    trainer.discriminator_component.update = spy
    column = trainer.reward_funcs[0]
    original_call = type(column).__call__
    got = {}

    def record(self, prompts, completions, **kwargs):
        got["rewards"] = list(self.scores)
        return original_call(self, prompts, completions, **kwargs)

    type(column).__call__ = record
    try:
        trainer.train()
    finally:
        type(column).__call__ = original_call
    expected = RewardShaping(0.3, 0.05)(seen["raw"], seen["lengths"])
    assert torch.allclose(torch.tensor(got["rewards"]), expected, atol=1e-6)
    assert all(abs(r) <= 0.05 + 1e-7 for r in got["rewards"])
    assert not torch.allclose(seen["raw"], expected)  # the loss saw the raw scores


def test_shaping_is_saved_with_the_discriminator(tiny_model_dir, tmp_path):
    from gad_trl.discriminator.adapters import load_saved_discriminator

    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_length_penalty=0.25,
                           discriminator_score_clip=4.0)
    trainer.train()
    trainer.save_model()
    config = json.loads((tmp_path / "discriminator" / "config.json").read_text())
    assert config["discriminator_length_penalty"] == 0.25 and config["discriminator_score_clip"] == 4.0
    assert RewardShaping.of(load_saved_discriminator(str(tmp_path / "discriminator"))) == RewardShaping(0.25, 4.0)
