"""GADTrainer on an offline tiny Qwen2 (transformers generation, CPU)."""

import pytest
import torch

from gad_trl import GADTrainer
from tests.helpers.gad_helpers import make_args, make_trainer, params_of, same_params, score_atol

SPEC_METRICS = [
    "discriminator/loss", "discriminator/accuracy", "discriminator/teacher_score_mean",
    "discriminator/teacher_score_std", "discriminator/student_score_mean", "discriminator/student_score_std",
    "discriminator/score_diff", "discriminator/bt_loss", "discriminator/grad_norm", "discriminator/learning_rate",
    "discriminator/student_truncated_ratio",
]


def test_trains_and_logs_spec_and_trl_metrics(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for name in SPEC_METRICS + ["reward", "reward_std", "completions/mean_length", "completions/clipped_ratio", "entropy"]:
        assert name in logs[-1], name
    assert logs[-1]["discriminator/learning_rate"] == pytest.approx(1e-3)
    # rewards are the discriminator's student scores
    assert logs[-1]["reward"] == pytest.approx(logs[-1]["discriminator/student_score_mean"], abs=1e-6)


@pytest.mark.parametrize("loss_type, terms", [
    ("hinge", ["hinge_loss", "bce_loss"]),
    ("two_sided_hinge", ["hinge_loss", "upper_hinge_loss", "bce_loss"]),
    ("balanced", ["bce_loss", "score_reg_loss", "overconfidence_loss"]),
])
def test_each_loss_variant_logs_its_terms(tiny_model_dir, tmp_path, loss_type, terms):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_loss_type=loss_type)
    trainer.train()
    log = trainer.state.log_history[0]
    for term in terms:
        assert f"discriminator/{term}" in log


def test_discriminator_learns_during_critic_warmup_and_student_stays_frozen(tiny_model_dir, tmp_path):
    steps = 12
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=steps, critic_warmup_steps=steps, num_rows=16)
    student0, disc0 = params_of(trainer.model), params_of(trainer.discriminator)
    trainer.train()
    accuracy = [h["discriminator/accuracy"] for h in trainer.state.log_history if "discriminator/accuracy" in h]
    assert len(accuracy) == steps
    # toy is separable (teacher: upper-case words + EOS; random student: noise): D must get well above chance
    assert sum(accuracy[-4:]) / 4 > 0.75, accuracy
    assert same_params(student0, params_of(trainer.model)), "student changed during the critic warm-up"
    assert not same_params(disc0, params_of(trainer.discriminator))
    assert all(h["learning_rate"] == 0.0 for h in trainer.state.log_history if "learning_rate" in h)


def test_student_frozen_before_critic_warmup_ends_and_changes_after(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = params_of(model)

    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=4, critic_warmup_steps=2)
    trainer.add_callback(Snapshot())
    initial = params_of(trainer.model)
    trainer.train()
    assert same_params(initial, snapshots[1]) and same_params(initial, snapshots[2])
    assert not same_params(initial, snapshots[3])
    phases = [h["discriminator/phase"] for h in trainer.state.log_history if "discriminator/phase" in h]
    assert phases == [0.0, 0.0, 2.0, 2.0]


def test_sft_warmup_trains_student_on_teacher_text(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=6, sft_warmup_steps=6, learning_rate=5e-3,
                           lr_scheduler_type="constant")
    trainer.train()
    sft = [h["sft/loss"] for h in trainer.state.log_history if "sft/loss" in h]
    assert len(sft) == 6
    assert sft[-1] < sft[0]  # cross-entropy on the teacher responses goes down


def test_discriminator_steps_under_gradient_accumulation(tiny_model_dir, tmp_path):
    # The trap: an optimizer passed through accelerator.prepare skips its step inside accumulation windows.
    trainer = make_trainer(
        tiny_model_dir, tmp_path, max_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=2,
        num_generations=4, steps_per_generation=2,
    )
    disc0 = params_of(trainer.discriminator)
    trainer.train()
    assert not same_params(disc0, params_of(trainer.discriminator))
    state = trainer.discriminator_optimizer.state_dict()["state"]
    assert max(int(s["step"]) for s in state.values()) == 2  # one update per generation batch


def test_teacher_scored_once_per_prompt_and_rewards_are_pre_update_scores(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, per_device_train_batch_size=8, num_generations=4)
    original = trainer.discriminator_component.update
    calls = []

    def spy(batch, step):
        student_seqs = batch.student_seqs
        with torch.no_grad():
            before = trainer.discriminator_component.score(student_seqs)
        rewards, info = original(batch, step)
        with torch.no_grad():
            after = trainer.discriminator_component.score(student_seqs)
        calls.append((batch.num_teacher, len(student_seqs), before, after, rewards, batch.pairs))
        return rewards, info

    trainer.discriminator_component.update = spy
    trainer.train()
    assert len(calls) == 2
    for num_teacher, num_student, before, after, rewards, index in calls:
        assert (num_teacher, num_student) == (2, 8)  # 8 completions of 2 prompts: 2 teacher sequences, not 8
        assert index.teacher.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and index.weight is None  # one answer a prompt
        assert torch.allclose(rewards, before, atol=score_atol(trainer))
        assert not torch.allclose(rewards, after, atol=score_atol(trainer))


def test_mini_batched_discriminator_update_matches_one_pass(tiny_model_dir, tmp_path):
    results, tolerance = [], 1e-5
    for mini in (None, 3):
        trainer = make_trainer(tiny_model_dir, tmp_path / str(mini), max_steps=1, discriminator_mini_batch_size=mini,
                               per_device_train_batch_size=8)
        trainer.train()
        results.append(params_of(trainer.discriminator))
        # bf16 rounding depends on how rows are batched and can flip a tiny gradient's sign; Adam then moves that
        # weight by up to lr the other way, hence 2.5 * lr on GPU. Float32 (CPU) agrees to rounding.
        tolerance = 2.5 * trainer.args.discriminator_learning_rate if trainer.args.bf16 else 1e-5
    assert same_params(results[0], results[1], atol=tolerance)


def test_teacher_response_gets_the_students_eos(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1)
    tok = trainer.processing_class
    ids, cut = trainer.discriminator_component.encoder.teacher_completion_ids("SOME HER")
    assert not cut
    assert ids == tok(text="SOME HER", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert ids[-1] in trainer.eos_token_ids  # what a finished student completion ends with
    long_ids, cut = trainer.discriminator_component.encoder.teacher_completion_ids("SOME HER " * 20)
    assert cut and len(long_ids) == trainer.max_completion_length


def test_config_and_constructor_errors(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ValueError, match="discriminator_loss_type='bt'"):
        make_args(tmp_path, discriminator_loss_type="bt")
    with pytest.raises(ValueError, match="critic_warmup_steps must be >= 0"):
        make_args(tmp_path, critic_warmup_steps=-1)
    with pytest.raises(ValueError, match="vllm_request_timeout must be a positive number of seconds or None"):
        make_args(tmp_path, vllm_request_timeout=0)
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="needs a GADConfig"):
        GADTrainer(tiny_model_dir, args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True), train_dataset=None)
    two_labels = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    from datasets import Dataset

    from gad_trl.tiny import tiny_gad_rows

    with pytest.raises(ValueError, match="num_labels=1"):
        GADTrainer(tiny_model_dir, args=make_args(tmp_path), train_dataset=Dataset.from_list(tiny_gad_rows(4)),
                   discriminator=two_labels)


def test_discriminator_from_student_instance_copies_backbone(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl.discriminator.model import backbone
    from gad_trl.tiny import tiny_gad_rows

    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = GADTrainer(student, args=make_args(tmp_path, max_steps=1), train_dataset=Dataset.from_list(tiny_gad_rows(4)),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    assert same_params(params_of(backbone(student)), params_of(backbone(trainer.discriminator)))


def test_evaluation_logs_discriminator_metrics(tiny_model_dir, tmp_path):
    from datasets import Dataset

    from gad_trl.tiny import tiny_gad_rows

    args = make_args(tmp_path, max_steps=1, per_device_eval_batch_size=4, eval_strategy="no")
    trainer = GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)),
                         eval_dataset=Dataset.from_list(tiny_gad_rows(4, seed=1)))
    disc0 = params_of(trainer.discriminator)
    metrics = trainer.evaluate()
    assert "eval_discriminator/accuracy" in metrics and "eval_discriminator/score_diff" in metrics
    assert same_params(disc0, params_of(trainer.discriminator))  # evaluation never updates D


def test_fixed_heldout_triples_are_sampled_once_and_scored_at_every_evaluation(tiny_model_dir, tmp_path):
    import json

    from datasets import Dataset

    from gad_trl.tiny import tiny_gad_rows

    args = make_args(tmp_path, max_steps=2, per_device_eval_batch_size=4, discriminator_heldout_size=3)
    trainer = GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(8)),
                         eval_dataset=Dataset.from_list(tiny_gad_rows(6, seed=1)))
    rng_before = torch.random.get_rng_state()
    trainer.heldout_triples()
    assert torch.equal(rng_before, torch.random.get_rng_state())  # sampling the triples leaves the training RNG alone
    first = trainer.evaluate()
    cache = tmp_path / "heldout_triples.jsonl"
    triples_first = cache.read_text()
    assert len(triples_first.strip().splitlines()) == 1 + 3  # metadata + 3 triples
    trainer.train()
    second = trainer.evaluate()
    assert cache.read_text() == triples_first  # same prompts, teacher and student responses
    for metrics in (first, second):
        assert 0.0 <= metrics["eval_discriminator_heldout/accuracy"] <= 1.0
        assert "eval_discriminator_heldout/score_diff" in metrics
    # the discriminator trained in between, so its held-out scores moved
    assert first["eval_discriminator_heldout/score_diff"] != second["eval_discriminator_heldout/score_diff"]
    logged = [h for h in trainer.state.log_history if "eval_discriminator_heldout/accuracy" in h]
    assert logged[-1]["eval_discriminator_heldout/score_diff"] == second["eval_discriminator_heldout/score_diff"]
    rows = [json.loads(line) for line in triples_first.splitlines()[1:]]
    assert {r["teacher_response"] for r in rows} <= set(Dataset.from_list(tiny_gad_rows(6, seed=1))["teacher_response"])


@pytest.mark.parametrize("policy, disc, expected", [(True, None, True), (False, None, False), (True, False, False), (False, True, True)])
def test_discriminator_gradient_checkpointing_follows_the_policy_by_default(tiny_model_dir, tmp_path, policy, disc, expected):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, gradient_checkpointing=policy,
                           discriminator_gradient_checkpointing=disc)
    assert trainer.discriminator.is_gradient_checkpointing is expected
    if expected:
        disc0 = params_of(trainer.discriminator)
        trainer.train()  # the discriminator still learns through checkpointed layers
        assert not same_params(disc0, params_of(trainer.discriminator))


def test_half_precision_discriminator_warns(tiny_model_dir, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="gad_trl.trainer"):
        trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1)
    assert trainer.discriminator.dtype == torch.float32 and "keeps no float32 copy" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="gad_trl.trainer"):
        trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_init_kwargs={"dtype": "bfloat16"})
    assert trainer.discriminator.dtype == torch.bfloat16
    assert "bfloat16 and its AdamW keeps no float32 copy" in caplog.text and "dtype: float32" in caplog.text


def test_discriminator_schedule_counts_its_own_updates(tiny_model_dir, tmp_path):
    """num_iterations=2: one generation batch (one discriminator update) per two student steps; a linear schedule
    over the run must still reach zero at the end, in 2 updates for 4 student steps."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=4, num_iterations=2,
                           discriminator_lr_scheduler_type="linear")
    trainer.train()
    assert trainer.discriminator_lr_scheduler.last_epoch == 2
    assert trainer.discriminator_optimizer.param_groups[0]["lr"] == 0.0
    lrs = [h["discriminator/learning_rate"] for h in trainer.state.log_history if "discriminator/learning_rate" in h]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-4)  # before each of the 2 updates
