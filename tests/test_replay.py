"""Replay of past student completions as discriminator negatives, and the teacher cross-entropy term of the GRPO
phase (`sft_loss_coef`)."""

import collections

import pytest
import torch

from gad_trl import GADConfig
from gad_trl.discriminator.replay import ReplayBuffer, ReplayPair
from tests.gad_helpers import make_trainer, params_of, same_params


def _pairs(start, n):
    return [ReplayPair([0, i], [1, i], 1, 1) for i in range(start, start + n)]


def test_buffer_keeps_a_uniform_sample_of_the_whole_history():
    """Reservoir sampling: after 1000 pairs a 100-slot buffer holds about as many early pairs as late ones (a FIFO
    would hold only the last 100)."""
    counts = collections.Counter()
    for seed in range(30):
        buffer = ReplayBuffer(100, seed)
        for step in range(10):
            buffer.add(_pairs(step * 100, 100))
        assert len(buffer) == 100 and buffer.seen == 1000
        counts.update(p.student[1] // 500 for p in buffer.pairs)  # 0: first half of the history, 1: second half
    assert abs(counts[0] - counts[1]) < 0.15 * 3000


def test_buffer_state_round_trip_replays_the_same_pairs():
    a = ReplayBuffer(8, seed=3)
    a.add(_pairs(0, 20))
    b = ReplayBuffer(8, seed=99)
    state = a.state_dict()
    state["rng"] = [state["rng"][0], list(state["rng"][1]), state["rng"][2]]  # as torch.load may return it
    b.load_state_dict(state)
    a.add(_pairs(20, 5))
    b.add(_pairs(20, 5))
    assert [p.student for p in a.sample(4)] == [p.student for p in b.sample(4)]
    assert a.sample(100) and len(a.sample(100)) == 8  # never more than it holds
    with pytest.raises(ValueError, match="discriminator_replay_buffer_size is 4"):
        ReplayBuffer(4, 0).load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    "overrides, message",
    [({"discriminator_replay_buffer_size": -1}, "discriminator_replay_buffer_size must be >= 0"),
     ({"discriminator_replay_buffer_size": 8, "discriminator_replay_ratio": 0.0}, "discriminator_replay_ratio must be > 0"),
     ({"sft_loss_coef": -0.5}, "sft_loss_coef must be >= 0")],
)
def test_bad_replay_and_sft_coef_settings_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        GADConfig(output_dir=str(tmp_path), **overrides)


def test_updates_train_on_replayed_pairs_and_reward_only_the_current_ones(tiny_model_dir, tmp_path):
    """Step 1 has nothing to replay; from step 2 each update scores ratio x (batch) earlier completions as extra
    negatives, while the rewards stay one per current completion."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=3, discriminator_replay_buffer_size=64,
                           discriminator_replay_ratio=0.5)
    scored, rewards = [], []
    component = trainer.discriminator_component
    original_score, original_update = component.score, trainer._discriminator_update

    def score(sequences, *a, **k):
        scored.append(len(sequences))
        return original_score(sequences, *a, **k)

    def update(*a, **k):
        out = original_update(*a, **k)
        rewards.append(len(out[0]))
        return out

    component.score, trainer._discriminator_update = score, update
    trainer.train()
    batch = trainer.args.per_device_train_batch_size  # completions per update
    teachers = batch // trainer.args.num_generations
    assert rewards == [batch] * 3
    replayed = batch // 2
    assert scored == [teachers + batch] + [teachers + batch + 2 * replayed] * 2  # each replayed pair brings its teacher
    logged = [h["discriminator/replay_pairs"] for h in trainer.state.log_history if "discriminator/replay_pairs" in h]
    assert logged == [0.0, replayed, replayed]
    assert all("discriminator/replay_accuracy" in h for h in trainer.state.log_history[1:3])
    assert len(trainer.discriminator_component.replay) == 3 * batch and trainer.discriminator_component.replay.seen == 3 * batch


@pytest.mark.filterwarnings("ignore:critic_warmup_steps=2 >= max_steps")
def test_replayed_pairs_change_the_discriminator_update(tiny_model_dir, tmp_path):
    """Same seed, same first step: from the second update on, replay gives a different discriminator."""
    runs = {}
    for size in (0, 64):
        trainer = make_trainer(tiny_model_dir, tmp_path / str(size), max_steps=2, critic_warmup_steps=2,
                               discriminator_replay_buffer_size=size)
        trainer.train()
        runs[size] = params_of(trainer.discriminator)
    assert not same_params(runs[0], runs[64], atol=1e-7)


def test_resume_restores_the_replay_buffer_exactly(tiny_model_dir, tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, critic_warmup_steps=1,
                  discriminator_replay_buffer_size=6)  # smaller than the history: the reservoir's RNG matters
    full = make_trainer(tiny_model_dir, tmp_path / "full", **common)
    full.train()
    assert (tmp_path / "full" / "checkpoint-2" / "discriminator_replay-rank0.pt").is_file()
    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.discriminator_component.replay.state_dict() == full.discriminator_component.replay.state_dict()
    assert same_params(params_of(full.discriminator), params_of(resumed.discriminator), atol=1e-6)
    assert same_params(params_of(full.model), params_of(resumed.model), atol=1e-6)


def test_sft_loss_coef_adds_the_teacher_cross_entropy_to_the_grpo_loss(tiny_model_dir, tmp_path):
    """In the GRPO phase the student's loss is GRPO's + coef x the cross-entropy on the batch's teacher responses."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, sft_loss_coef=0.5)
    parts = []
    grpo_compute_loss = type(trainer).__mro__[1].compute_loss
    original_sft = trainer._sft_loss

    def sft(model, inputs):
        value = original_sft(model, inputs)
        parts.append(("sft", value.item()))
        return value

    def compute_loss(model, inputs, *a, **k):
        loss = type(trainer).compute_loss(trainer, model, inputs, *a, **k)
        with torch.no_grad():
            grpo = grpo_compute_loss(trainer, model, inputs)
        parts.append(("total", loss.item(), grpo.item()))
        return loss

    trainer._sft_loss, trainer.compute_loss = sft, compute_loss
    trainer.train()
    totals = [p for p in parts if p[0] == "total"]
    sfts = [p[1] for p in parts if p[0] == "sft"]
    assert len(totals) == 2 and len(sfts) == 2
    for (_, total, grpo), ce in zip(totals, sfts):
        assert ce > 0 and total == pytest.approx(grpo + 0.5 * ce, rel=1e-5, abs=1e-6)
    assert any("sft/loss" in h for h in trainer.state.log_history)

    plain = make_trainer(tiny_model_dir, tmp_path / "plain", max_steps=2, sft_loss_coef=0.0)
    plain.train()
    assert not any("sft/loss" in h for h in plain.state.log_history)  # 0: the paper's pure GRPO


def test_discriminator_num_iterations_steps_several_times_per_batch(tiny_model_dir, tmp_path):
    """k optimizer steps on each batch's pairs; the rewards are the scores from before the first, so the first batch's
    rewards equal a one-step run's, and the discriminator's LR schedule counts k updates per batch."""
    runs = {}
    for k in (1, 3):
        trainer = make_trainer(tiny_model_dir, tmp_path / str(k), max_steps=2, discriminator_num_iterations=k,
                               discriminator_lr_scheduler_type="linear")
        rewards = []
        original_update = trainer._discriminator_update

        def update(*a, _original=original_update, _rewards=rewards, **kw):
            out = _original(*a, **kw)
            _rewards.append(out[0].clone())
            return out

        trainer._discriminator_update = update
        trainer.train()
        runs[k] = (trainer, rewards)
    one, three = runs[1][0], runs[3][0]
    steps = {int(s["step"]) for s in three.discriminator_optimizer.state_dict()["state"].values()}
    assert steps == {6}
    assert three.discriminator_lr_scheduler.state_dict()["_step_count"] - 1 == 6
    assert three.discriminator_lr_scheduler.get_last_lr()[0] == pytest.approx(0.0)  # linear decay over 6 updates
    assert torch.allclose(runs[1][1][0], runs[3][1][0], atol=1e-6)  # batch 1: same pre-update scores
    assert not same_params(params_of(one.discriminator), params_of(three.discriminator), atol=1e-7)
    assert "discriminator/last_iteration_loss" in three.state.log_history[0]
    with pytest.raises(ValueError, match="discriminator_num_iterations must be >= 1"):
        GADConfig(output_dir=str(tmp_path), discriminator_num_iterations=0)
