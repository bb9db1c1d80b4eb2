"""The within-prompt reward-judge AUC that `JudgeEvalCallback` logs in a GAD run (`eval/discriminator_judge_auc`):
per-answer judge scores (`evaluation.judge_completions`), discriminator scores encoded as the trainer encodes them
(`Discriminator.score_triples`), and the callback on a tiny run, with a local scripted judge whose
ratings are a known function of the answer."""

from __future__ import annotations

import json
import math

import pytest

from gad_trl.tiny import build_tiny_tokenizer, save_tiny_model, write_jsonl
from gad_trl.workflow import checkpoint_selection as CS
from gad_trl.workflow import judge as J
from gad_trl.workflow.agreement import within_prompt_auc
from gad_trl.workflow.evaluation import AGREEMENT_FILE, SUMMARY_FILE, EvaluationArguments, judge_completions

from tests.helpers.fault_server import REVIEW, FaultServer, scripted_judge
from tests.helpers.gad_helpers import make_trainer, read_jsonl, score_atol
from tests.workflow.test_evaluation import rows  # the judge tests' eval rows

pytestmark = pytest.mark.timeout(240)


def quality(answer: str) -> float:
    """The scripted judge's rating of an answer (1-10, not monotone in length: a misaligned score shows)."""
    return 1 + (len(answer) % 90) / 10


def rate_assistant_2(question, answer_1, answer_2):
    return f"5 {quality(answer_2)}\nrated by length"


# ----------------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------------


def test_bad_agreement_settings_are_clear_errors():
    base = dict(dataset_name="d.jsonl", judge_base_url="http://j")
    assert EvaluationArguments(**base).discriminator_judge_samples == 4  # on by default (GAD runs only)
    EvaluationArguments(**base, discriminator_judge_samples=0)  # off
    with pytest.raises(ValueError, match="at least 2 per prompt"):
        EvaluationArguments(**base, discriminator_judge_samples=1)
    with pytest.raises(ValueError, match="discriminator_judge_temperature must be > 0"):
        EvaluationArguments(**base, discriminator_judge_temperature=0.0)
    with pytest.raises(ValueError, match="discriminator_judge_max_prompts must be >= 1"):
        EvaluationArguments(**base, discriminator_judge_max_prompts=0)


def test_a_sharded_discriminator_is_refused_and_no_discriminator_means_no_agreement():
    from types import SimpleNamespace

    args = SimpleNamespace(fsdp=[], output_dir="run")
    eval_args = EvaluationArguments(dataset_name="d.jsonl", judge_base_url="http://j")
    sharded = SimpleNamespace(discriminator_component=SimpleNamespace(sharded=True), tools=None)
    with pytest.raises(ValueError, match="discriminator_sharding"):
        CS.JudgeEvalCallback(eval_args, trainer=sharded).on_train_begin(args, None, None)
    callback = CS.JudgeEvalCallback(eval_args, trainer=SimpleNamespace())  # e.g. SeqKD: no discriminator
    callback.on_train_begin(args, None, None)
    assert callback.agreement is False
    off = CS.JudgeEvalCallback(EvaluationArguments(dataset_name="d.jsonl", judge_base_url="http://j",
                                                   discriminator_judge_samples=0), trainer=sharded)
    off.on_train_begin(args, None, None)  # off: the discriminator is not looked at
    assert off.agreement is False
    tools = SimpleNamespace(discriminator_component=SimpleNamespace(sharded=False), tools=[print])
    callback = CS.JudgeEvalCallback(eval_args, trainer=tools)
    callback.on_train_begin(args, None, None)
    assert callback.agreement is False


# ----------------------------------------------------------------------------------------------------------------------
# Per-answer judge scores
# ----------------------------------------------------------------------------------------------------------------------


def test_judge_completions_rates_every_answer_against_one_reference(tmp_path):
    def review(question, answer_1, answer_2):
        if answer_2 == "garbled":
            return "no score line"
        return rate_assistant_2(question, answer_1, answer_2)

    answers = {"0": ["a", "bbbb", "garbled"], "1": ["cc", "dddddd"]}
    with FaultServer(scripted_judge(review)) as judge:
        args = EvaluationArguments(dataset_name="unused", judge_base_url=judge.url, concurrency=3)
        keyed = [(str(i), row) for i, row in enumerate(rows(3))]  # row 2 has no answers: nothing asked for it
        judged, failures = judge_completions(args, keyed, answers, tmp_path)
        assert failures == [] and set(judged) == {"0", "1"}
        for key, texts in answers.items():
            for text, record in zip(texts, judged[key], strict=True):
                if text == "garbled":
                    assert record["parseable"] is False and record["score"] is None
                else:
                    assert record["score"] == pytest.approx(J.relative_score(5, quality(text)))
                    assert record["reference_answer"] == f"REFERENCE question number {key}"
        references = [r for r in judge.requests if not REVIEW.search(r["messages"][-1]["content"])]
        assert len(references) == 2  # one reference per prompt, shared by its answers, cached for the next call
        judge_completions(args, keyed, answers, tmp_path)
        assert len([r for r in judge.requests if not REVIEW.search(r["messages"][-1]["content"])]) == 2
        assert len(read_jsonl(tmp_path / "judge_references.jsonl")) == 2


def test_judge_completions_pairwise_gives_each_answer_its_win_rate(tmp_path):
    def review(question, answer_1, answer_2):  # "win" beats the teacher in both orders, "lose" loses both
        student_first = not answer_1.startswith("TEACHER")
        student = answer_1 if student_first else answer_2
        good = "9 2" if student_first else "2 9"
        return good if student == "win" else good[::-1] if student == "lose" else "5 5"

    with FaultServer(scripted_judge(review)) as judge:
        args = EvaluationArguments(dataset_name="unused", judge_base_url=judge.url, mode="pairwise")
        judged, _ = judge_completions(args, [("0", rows(1, teacher=True)[0])], {"0": ["win", "lose", "tie"]},
                                      tmp_path)
    assert [r["score"] for r in judged["0"]] == [1.0, 0.0, 0.5]


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator scores as in training
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_disc_dir(tmp_path_factory):
    """A tiny Qwen2 with a tokenizer of another family: the discriminator re-encodes what it reads."""
    return save_tiny_model(tmp_path_factory.mktemp("other-disc"), seed=3,
                           tokenizer=build_tiny_tokenizer(400, other_family=True))


@pytest.mark.parametrize("case", ["last", "mean", "own_tokenizer"])
def test_discriminator_scores_are_the_trainers_rewards(case, tiny_model_dir, other_disc_dir, tmp_path):
    """The scores of sampled completions equal what the trainer's reward step computes for them: its sequences (the
    prompt's ids + the sampled ids, or `encode_batch` for a discriminator with its own tokenizer) through its
    discriminator (`Discriminator.score`), and the student side of the held-out evaluation."""
    from gad_trl.data import prompt_ids
    from gad_trl.discriminator.heldout import sample_triples
    from gad_trl.discriminator.model import eval_mode

    overrides = {"discriminator_pooling": "mean"} if case == "mean" else {}
    if case == "own_tokenizer":
        overrides["discriminator_model_name_or_path"] = other_disc_dir
    trainer = make_trainer(tiny_model_dir, tmp_path, **overrides)
    assert (trainer.discriminator_component.encoder.encoding is not None) == (case == "own_tokenizer")
    draws = [{"prompt": r["prompt"], "teacher_response": None, "row": str(i)} for i, r in enumerate(rows(3))
             for _ in range(2)]
    triples = sample_triples(trainer.model, trainer.processing_class, draws, seed=0, max_new_tokens=8,
                             temperature=1.0)
    scores = trainer.discriminator_component.score_triples(triples)

    prompts = [t["prompt"] for t in triples]
    completions = [t["student_completion_ids"] for t in triples]
    if trainer.discriminator_component.encoder.encoding is None:
        sequences = [prompt_ids(trainer.processing_class, p) + list(c) for p, c in zip(prompts, completions)]
        starts = [len(prompt_ids(trainer.processing_class, p)) for p in prompts]
    else:
        _, sequences, starts = trainer.discriminator_component.encoder.encoding.encode_batch(prompts, [[] for _ in prompts], [],
                                                                            completions)
    with eval_mode(trainer.discriminator):
        expected = trainer.discriminator_component.score(sequences, None, starts).tolist()
    assert scores == pytest.approx(expected, abs=score_atol(trainer))
    heldout = trainer.discriminator_component.evaluate_triples(
        [dict(t, teacher_response="a teacher answer") for t in triples])
    assert scores == pytest.approx(heldout["student_scores"], abs=score_atol(trainer))
    assert len(set(round(s, 6) for s in scores)) > 1  # distinct completions, distinct scores: the test can fail


# ----------------------------------------------------------------------------------------------------------------------
# The callback in a tiny GAD run
# ----------------------------------------------------------------------------------------------------------------------


def test_gad_run_logs_the_discriminator_judge_auc(tiny_model_dir, tmp_path, monkeypatch):
    from gad_trl.discriminator.heldout import sample_triples

    data = write_jsonl(rows(3), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    ckpt = out / "checkpoint-1"
    with FaultServer(scripted_judge(rate_assistant_2)) as judge:
        eval_args = EvaluationArguments(dataset_name=data, judge_base_url=judge.url, student_max_tokens=6)
        trainer = make_trainer(tiny_model_dir, out, max_steps=1, save_strategy="steps", save_steps=1,
                               discriminator_length_penalty=0.5)
        callback = CS.JudgeEvalCallback(eval_args)  # not told the trainer: it finds the one running it
        trainer.add_callback(callback)
        trainer.train()
        assert callback.trainer is trainer and callback.agreement

        entry = next(e for e in trainer.state.log_history if "eval_judge/score" in e)
        summary = json.loads((ckpt / SUMMARY_FILE).read_text())
        agreement = summary["discriminator_judge"]
        assert agreement["samples_per_prompt"] == 4 and agreement["completions"] == 12
        assert agreement["temperature"] == trainer.temperature and agreement["unscored"] == 0
        assert agreement["pairs"] > 0 and 0.0 <= agreement["auc"] <= 1.0
        assert entry[CS.AUC_KEY] == agreement["auc"] and entry[CS.PAIRS_KEY] == agreement["pairs"]
        assert entry[CS.SHAPED_AUC_KEY] == agreement["shaped_reward_auc"] and entry["step"] == 1
        assert summary["judged"] == 3  # the score itself: one greedy answer per prompt, as without the agreement

        records = read_jsonl(ckpt / AGREEMENT_FILE)
        assert [(r["row_id"], r["sample"]) for r in records] == [(str(i), s) for i in range(3) for s in range(4)]
        for r in records:
            assert r["judge_score"] == pytest.approx(J.relative_score(5, quality(r["student_answer"])))
            assert 1 <= r["student_tokens"] <= trainer.max_completion_length
            assert r["shaped_reward"] == pytest.approx(r["discriminator_score"] - 0.5 * math.log1p(r["student_tokens"]),
                                                       abs=1e-5)
        groups = [([r["discriminator_score"] for r in records if r["row_id"] == k],
                   [r["judge_score"] for r in records if r["row_id"] == k]) for k in ("0", "1", "2")]
        assert within_prompt_auc(groups)["auc"] == pytest.approx(agreement["auc"])
        # The discriminator scores are those of the saved discriminator on these exact completions.
        triples = sample_triples(trainer.model, trainer.processing_class,
                                 [{"prompt": rows(3)[int(r["row_id"])]["prompt"], "teacher_response": None}
                                  for r in records], seed=trainer.args.seed,
                                 max_new_tokens=trainer.max_completion_length, temperature=trainer.temperature,
                                 batch_size=eval_args.student_batch_size)
        assert [t["student_response"] for t in triples] == [r["student_answer"] for r in records]
        assert trainer.discriminator_component.score_triples(triples) == pytest.approx(
            [r["discriminator_score"] for r in records], abs=score_atol(trainer))

        # A discriminator that orders completions as the judge does gets AUC 1, the reverse order 0.
        def agreeing(triples, batch_size=8):
            return [quality(t["student_response"]) for t in triples]

        monkeypatch.setattr(trainer.discriminator_component, "score_triples", agreeing)
        agree = CS.discriminator_judge_agreement(eval_args, trainer, trainer.model, trainer.processing_class,
                                                 tmp_path / "agree", seed=0)
        assert agree["auc"] == 1.0 and agree["pairs"] > 0 and agree["prompts"] >= 1
        monkeypatch.setattr(trainer.discriminator_component, "score_triples",
                            lambda triples, batch_size=8: [-s for s in agreeing(triples)])
        assert CS.discriminator_judge_agreement(eval_args, trainer, trainer.model, trainer.processing_class,
                                                tmp_path / "disagree", seed=0)["auc"] == 0.0
        eval_args.discriminator_judge_max_prompts, eval_args.discriminator_judge_samples = 1, 2
        few = CS.discriminator_judge_agreement(eval_args, trainer, trainer.model, trainer.processing_class,
                                               tmp_path / "few", seed=0)
        assert few["completions"] == 2 and len(read_jsonl(tmp_path / "few" / AGREEMENT_FILE)) == 2
