"""Replay of past student completions as discriminator negatives, and the teacher cross-entropy term of the GRPO
phase (`sft_loss_coef`)."""

import collections

import pytest
import torch

from gad_trl import GADConfig
from gad_trl.discriminator.inputs import DiscriminatorBatch, Pairs
from gad_trl.discriminator.replay import ReplayBuffer, ReplayPair
from tests.helpers.gad_helpers import make_trainer, params_of, response_sequences, same_params, score_atol


def _pairs(start, n):
    return [ReplayPair([0, i], [1, i], 1, 1) for i in range(start, start + n)]


def spy_on_discriminator(trainer, describe):
    """Two lists filled during training: `describe(sequences)` of every scoring call, and the number of rewards
    each update returns."""
    scored, rewards = [], []
    component = trainer.discriminator_component
    original_score, original_update = component.score, component.update

    def score(sequences, *a, **k):
        scored.append(describe(sequences))
        return original_score(sequences, *a, **k)

    def update(*a, **k):
        out = original_update(*a, **k)
        rewards.append(len(out[0]))
        return out

    component.score, component.update = score, update
    return scored, rewards


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
    assert a.leave_out(10, 4) == b.leave_out(10, 4)  # replace mode's draws resume exactly too
    assert a.sample(100) and len(a.sample(100)) == 8  # never more than it holds
    with pytest.raises(ValueError, match="discriminator_replay_buffer_size is 4"):
        ReplayBuffer(4, 0).load_state_dict(a.state_dict())


def test_leave_out_draws_distinct_sorted_indices_without_touching_the_reservoir():
    """Replace mode's choice of left-out completions has its own RNG: the buffer's contents and draws are those of
    add mode at the same seed."""
    a, b = ReplayBuffer(8, seed=5), ReplayBuffer(8, seed=5)
    a.add(_pairs(0, 20))
    b.add(_pairs(0, 20))
    chosen = b.leave_out(6, 3)
    assert len(set(chosen)) == 3 and chosen == sorted(chosen) and all(0 <= i < 6 for i in chosen)
    assert b.leave_out(6, 0) == [] and sorted(b.leave_out(4, 4)) == [0, 1, 2, 3]
    a.add(_pairs(20, 10))
    b.add(_pairs(20, 10))
    assert [p.student for p in a.pairs] == [p.student for p in b.pairs]
    assert [p.student for p in a.sample(5)] == [p.student for p in b.sample(5)]
    with pytest.raises(ValueError, match="Cannot leave out 7 of 6"):
        b.leave_out(6, 7)


@pytest.mark.parametrize(
    "overrides, message",
    [({"discriminator_replay_buffer_size": -1}, "discriminator_replay_buffer_size must be >= 0"),
     ({"discriminator_replay_buffer_size": 8, "discriminator_replay_ratio": 0.0}, "discriminator_replay_ratio must be > 0"),
     ({"discriminator_replay_mode": "replce"}, "discriminator_replay_mode must be 'add' or 'replace', got 'replce'"),
     ({"discriminator_replay_buffer_size": 8, "discriminator_replay_mode": "replace",
       "discriminator_replay_ratio": 1.0},
      "would leave no current completion to train on. Set discriminator_replay_ratio below 1"),
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
    scored, rewards = spy_on_discriminator(trainer, len)
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


def test_replace_mode_swaps_current_negatives_for_replayed_ones(tiny_model_dir, tmp_path):
    """In a run: from step 2 each update leaves ratio x batch current completions out (scored once without a graph,
    for their rewards) and trains on as many student sequences as the batch holds."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=3, discriminator_replay_buffer_size=64,
                           discriminator_replay_ratio=0.5, discriminator_replay_mode="replace")
    scored, rewards = spy_on_discriminator(trainer, lambda sequences: (len(sequences), torch.is_grad_enabled()))
    trainer.train()
    batch = trainer.args.per_device_train_batch_size
    teachers = batch // trainer.args.num_generations
    replaced = batch // 2
    assert rewards == [batch] * 3  # one reward per current completion, left-out ones included
    # Step 1: nothing to replay. Then: the left-out completions without a graph, then the update's forward on the
    # current teachers + the replayed teachers + (batch - r) current + r replayed students = batch students.
    assert scored == [(teachers + batch, True)] + [(replaced, False), (teachers + replaced + batch, True)] * 2
    history = trainer.state.log_history
    for name in ("discriminator/replay_replaced", "discriminator/replay_pairs"):
        assert [h[name] for h in history if name in h] == [0.0, replaced, replaced]
    assert trainer.discriminator_component.replay.seen == 3 * batch  # every current completion joins, left-out too


def _update_batch(trainer):
    """Three teacher sequences and six completions: prompt A (teacher 0) has two, prompt B has four, each paired with
    two answers (teachers 1 and 2, weight 1/2): k answers, so a completion has several pairs."""
    teachers, starts = response_sequences(trainer)
    students, student_starts, groups = [], [], []
    for prompt, answers, count in ((0, [0], 2), (1, [1, 2], 4)):
        for v in range(count):
            seq = teachers[prompt]
            students.append(seq[: starts[prompt]] + seq[starts[prompt] :][::-1][: len(seq) - starts[prompt] - v])
            student_starts.append(starts[prompt])
            groups.append(answers)
    return teachers, students, starts + student_starts, groups


def test_replace_mode_update_trains_on_n_students_and_rewards_every_current_completion(tiny_model_dir, tmp_path):
    """One replace-mode update with k answers per prompt: r = round(ratio x n) whole completions (all their pairs)
    leave the loss and the backward, r replayed pairs take their place (n student sequences trained on, n - r current
    + r replayed completions in the loss), and the rewards are every current completion's pre-step score, in order,
    as a plain scoring with the same weights gives them."""
    trainer = make_trainer(tiny_model_dir, tmp_path, discriminator_replay_buffer_size=16,
                           discriminator_replay_ratio=0.5, discriminator_replay_mode="replace")
    component = trainer.discriminator_component
    teachers, students, starts, groups = _update_batch(trainer)
    n, r = len(students), 3
    pairs = Pairs.from_groups(groups, torch.device("cpu"))
    past = [ReplayPair(teachers[0], teachers[1][:-2], starts[0], starts[1]) for _ in range(4)]
    component.replay.add([ReplayPair(p.teacher, p.student[:-i], p.teacher_start, p.student_start)
                          for i, p in enumerate(past, 1)])
    with torch.no_grad():  # what a no-replay scoring gives with the pre-update weights
        expected = component.score(teachers + students, response_starts=starts)
    before = params_of(component.model)

    steps, calls = [], []
    original_step, original_score = component.step, component.score

    def step(sequences, num_teacher, step_pairs, *a, **k):
        steps.append((list(sequences), num_teacher, step_pairs))
        return original_step(sequences, num_teacher, step_pairs, *a, **k)

    def score(sequences, *a, **k):
        calls.append((list(sequences), torch.is_grad_enabled()))
        return original_score(sequences, *a, **k)

    component.step, component.score = step, score
    rewards, info = component.update(DiscriminatorBatch(teachers, students, starts, pairs), global_step=1)
    assert not same_params(before, params_of(component.model), atol=1e-7)  # it trained

    (sequences, num_teacher, trained), = steps
    assert num_teacher == len(teachers) + r  # the current teachers + one per replayed pair
    trained_students = sequences[num_teacher:]
    assert len(trained_students) == n  # as many student sequences back-propagated as without replay
    kept = [s for s in students if s in trained_students[: n - r]]
    assert trained_students[: n - r] == kept and len(kept) == n - r  # current ones, in order
    left_out = [i for i, s in enumerate(students) if s not in kept]
    assert len(left_out) == r
    # Every pair of a kept completion, none of a left-out one, then one pair (weight 1) per replayed completion.
    kept_pairs = sum(len(groups[i]) for i in range(n) if i not in left_out)
    assert len(trained) == kept_pairs + r
    assert sorted(set(trained.student.tolist())) == list(range(n))
    assert trained.weight[:kept_pairs].tolist() == [1.0 / len(groups[i]) for i in range(n) if i not in left_out
                                                    for _ in groups[i]]
    assert trained.weight[kept_pairs:].tolist() == [1.0] * r
    assert trained.teacher[kept_pairs:].tolist() == list(range(len(teachers), len(teachers) + r))
    # The left-out completions were scored once, without a graph; the loss's forward had one.
    assert [(len(c), g) for c, g in calls] == [(r, False), (len(sequences), True)]
    assert calls[0][0] == [students[i] for i in left_out]

    assert rewards.shape == (n,)
    assert torch.allclose(rewards, expected[len(teachers) :], atol=score_atol(trainer))
    assert info["replay_replaced"] == r and info["replay_pairs"] == r
    # The logged metrics describe every current pair (left-out ones included), from the same pre-step scores.
    _, plain = component.pair_loss(expected, len(teachers), pairs)
    assert info["accuracy"] == pytest.approx(plain["accuracy"]) and "replay_accuracy" in info


def test_pairs_for_students_keeps_whole_completions():
    pairs = Pairs.from_groups([[0], [1, 2], [1, 2], [0]], torch.device("cpu"))
    kept = pairs.for_students([0, 2, 3], 4)
    assert kept.student.tolist() == [0, 1, 1, 2] and kept.teacher.tolist() == [0, 1, 2, 0]
    assert kept.weight.tolist() == [1.0, 0.5, 0.5, 1.0]


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


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_resume_restores_the_replay_buffer_exactly(tiny_model_dir, tmp_path, mode):
    """Replace mode: which current completions are left out resumes exactly too (its RNG is in the buffer's state)."""
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, critic_warmup_steps=1,
                  discriminator_replay_buffer_size=6,  # smaller than the history: the reservoir's RNG matters
                  discriminator_replay_mode=mode)
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
    original_sft = trainer.compute_sft_loss

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

    trainer.compute_sft_loss, trainer.compute_loss = sft, compute_loss
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
        original_update = trainer.discriminator_component.update

        def update(*a, _original=original_update, _rewards=rewards, **kw):
            out = _original(*a, **kw)
            _rewards.append(out[0].clone())
            return out

        trainer.discriminator_component.update = update
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
