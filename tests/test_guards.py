"""`gad_trl.guards`: a non-finite update (loss, scores or gradient norm) never reaches the weights of the discriminator or the student; n skips in a row stop the run naming the likely cause."""


import math

import pytest
import torch
from transformers import TrainerCallback

from gad_trl.guards import NonFiniteError, NonFiniteGuard
from tests.helpers.gad_helpers import make_trainer, params_of, same_params


class _Snapshots(TrainerCallback):
    """The student's weights after every optimizer step."""

    def __init__(self):
        self.params = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params.append(params_of(model))


def test_guard_skips_counts_and_stops_after_n_in_a_row():
    guard = NonFiniteGuard(max_in_a_row=3)
    assert guard.check(True, 0, "", "") is True
    assert guard.check(False, 1, "non-finite loss nan", "") is False
    assert guard.check(True, 2, "", "") is True  # a finite update resets the streak
    assert guard.check(False, 3, "x", "") is False and guard.check(False, 4, "x", "") is False
    with pytest.raises(NonFiniteError, match="3 updates in a row.*lower it"):
        guard.check(False, 5, "non-finite loss nan", "Likely cause: lr too high; lower it.")
    assert guard.total == 4


def test_nonfinite_discriminator_update_is_skipped_and_never_reaches_the_weights(tiny_model_dir, tmp_path):
    """One NaN forward: that update is skipped (D unchanged, counted), the student gets zero rewards, not NaN."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, discriminator_max_nonfinite_updates=2)
    calls = []

    def nan_once(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 1 else output

    before = params_of(trainer.discriminator)
    original_update = trainer.discriminator_component.update
    snapshots = []

    def update(*a, **k):
        out = original_update(*a, **k)
        snapshots.append((params_of(trainer.discriminator), out[0].clone()))
        return out

    trainer.discriminator_component.update = update
    handle = trainer.discriminator.model.norm.register_forward_hook(nan_once)
    trainer.train()
    handle.remove()
    first_params, first_rewards = snapshots[0]
    assert same_params(before, first_params)  # the NaN update was not applied
    assert not same_params(first_params, snapshots[1][0])  # the next, finite one was
    skipped = [h["discriminator/nonfinite_skipped"] for h in trainer.state.log_history if "discriminator/nonfinite_skipped" in h]
    assert skipped == [1.0, 0.0]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert rewards[0] == 0.0 and all(math.isfinite(r) for r in rewards)
    for model in (trainer.model, trainer.discriminator):
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverging_discriminator_stops_with_a_clear_error(tiny_model_dir, tmp_path):
    """The issue's case: discriminator_learning_rate 1e4 used to exit 0 with an all-NaN discriminator. Whether one
    1e4 step makes this tiny model's scores NaN depends on the CPU's kernels (on some machines they saturate to 0), so
    the divergence itself is forced: every forward from the second update on is NaN, as a diverged model's is."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=12, discriminator_learning_rate=1e4,
                           max_grad_norm=1.0, discriminator_max_nonfinite_updates=2)
    updates = []
    original_update = trainer.discriminator_component.update

    def update(*a, **k):
        updates.append(1)
        return original_update(*a, **k)

    def diverged(module, inputs, output):
        return output * float("nan") if len(updates) > 1 else output

    trainer.discriminator_component.update = update
    trainer.discriminator.model.norm.register_forward_hook(diverged)
    with pytest.raises(NonFiniteError, match="discriminator_learning_rate=10000 is too high"):
        trainer.train()
    assert len(updates) == 3  # one applied, then two skipped in a row: the limit
    assert all(torch.isfinite(p).all() for p in trainer.discriminator.parameters())


def test_student_divergence_in_sampling_names_the_learning_rate(tiny_model_dir, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    def diverged(self, prompts):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr(GRPOTrainer, "_generate", diverged)
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, learning_rate=1e4)
    with pytest.raises(NonFiniteError, match=r"student.*learning_rate=10000 is too high"):
        trainer.train()


def test_nonfinite_student_update_is_skipped_and_never_reaches_the_weights(tiny_model_dir, tmp_path):
    """NaN student gradients in the GRPO phase: that update is skipped (weights unchanged, counted), the next applies."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, max_grad_norm=1.0)
    snapshots = _Snapshots()
    trainer.add_callback(snapshots)
    before = params_of(trainer.model)
    weight = trainer.model.model.norm.weight
    calls = []
    handle = weight.register_hook(lambda grad: grad * float("nan") if len(calls.append(1) or calls) == 1 else grad)
    trainer.train()
    handle.remove()
    assert calls, "the student's GRPO loss never reached the hooked weight"
    assert same_params(before, snapshots.params[0])  # the NaN update was not applied
    assert not same_params(snapshots.params[0], snapshots.params[1])  # the next, finite one was
    skipped = [h["student/nonfinite_skipped"] for h in trainer.state.log_history if "student/nonfinite_skipped" in h]
    assert skipped == [1.0, 0.0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_student_loss_in_sft_warmup_stops_with_the_learning_rate(tiny_model_dir, tmp_path, monkeypatch):
    """A student loss that stays NaN (here in the SFT warm-up) is never applied and stops the run, naming the cause."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=6, sft_warmup_steps=6, learning_rate=1e4,
                           discriminator_max_nonfinite_updates=2)
    sft_loss = trainer.compute_sft_loss
    monkeypatch.setattr(trainer, "compute_sft_loss", lambda model, inputs: sft_loss(model, inputs) * float("nan"))
    before = params_of(trainer.model)
    with pytest.raises(NonFiniteError, match=r"student diverged: 2 updates in a row.*learning_rate=10000 is too high"):
        trainer.train()
    assert trainer.state.global_step == 1  # the first skip was counted as a step, the second stopped the run
    assert same_params(before, params_of(trainer.model))

