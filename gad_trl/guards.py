"""Keep non-finite numbers away from the weights.

The discriminator computes GAD's rewards itself, so TRL's NaN-reward warning never sees them, and NaN compares
false against every health threshold: without a guard a diverged discriminator trains on silently and is saved as
all-NaN. `NonFiniteGuard` decides, per discriminator update, whether its loss, scores and gradient norm are finite;
a non-finite update is skipped (no optimizer or scheduler step), counted and logged, and too many in a row stop the
run with `NonFiniteError` naming the likely causes. A second guard does the same for the student's updates (its
loss and gradient norm; `GADTrainer._get_grad_norm`), which transformers would otherwise clip with a NaN norm and
apply, and which a vLLM server would then be sent.
"""

from __future__ import annotations

import math

import torch


class NonFiniteError(FloatingPointError):
    """Training produced NaN/inf where it must not continue; the message names the likely cause and the fix."""


def all_finite(*values) -> bool:
    """True when every tensor / number given is finite (None is ignored)."""
    for value in values:
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            if not bool(torch.isfinite(value.detach()).all()):
                return False
        elif not math.isfinite(float(value)):
            return False
    return True


def finite_on_every_process(accelerator, finite: bool) -> bool:
    """Every replica must take the same skip decision: True only when `finite` holds on all processes."""
    if accelerator.num_processes > 1:
        flag = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
        finite = bool(accelerator.gather(flag).max() == 0)
    return finite


class NonFiniteGuard:
    """Counts skipped (non-finite) updates of one model (`name`: "discriminator" or "student") and stops after
    `max_in_a_row` consecutive ones."""

    def __init__(self, max_in_a_row: int, logger=None, name: str = "discriminator"):
        self.max_in_a_row = max_in_a_row
        self.logger = logger
        self.name = name
        self.in_a_row = 0
        self.total = 0

    def check(self, finite: bool, step: int, details: str, hint: str) -> bool:
        """Record one update; returns True when it may be applied. Raises `NonFiniteError` on the
        `max_in_a_row`-th non-finite update in a row. `details`: what was non-finite; `hint`: the likely cause."""
        if finite:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"The {self.name} diverged: {self.in_a_row} updates in a row had non-finite values ({details}; last "
                f"at step {step}). {hint} Training stopped so that no NaN reaches the saved weights "
                "(discriminator_max_nonfinite_updates sets how many skips in a row are tolerated)."
            )
        if self.logger is not None:
            self.logger.warning(
                f"[GAD step {step}] {self.name} update skipped: {details} "
                f"({self.in_a_row} in a row, {self.total} in all; the run stops at {self.max_in_a_row} in a row)."
            )
        return False


def nonfinite_details(loss, scores, grad_norm) -> str:
    """Which of an update's loss, scores and gradient norm are non-finite, in words (None: not checked)."""
    parts = []
    if loss is not None and not all_finite(loss):
        parts.append(f"loss {float(loss.detach()):.3g}" if isinstance(loss, torch.Tensor) else f"loss {loss}")
    if scores is not None and not all_finite(scores):
        bad = int((~torch.isfinite(scores.detach())).sum())
        parts.append(f"{bad}/{scores.numel()} scores")
    if grad_norm is not None and not all_finite(grad_norm):
        parts.append(f"gradient norm {float(grad_norm):.3g}")
    return "non-finite " + ", ".join(parts) if parts else "all finite"


def _precision_hint(args) -> str:
    return " fp16 overflows easily: prefer bf16 or float32." if getattr(args, "fp16", False) else ""


def discriminator_divergence_hint(args) -> str:
    return (
        f"Likely cause: discriminator_learning_rate={args.discriminator_learning_rate:g} is too high for this "
        "model (the paper uses 1e-6); lower it, or clip harder with discriminator_max_grad_norm." + _precision_hint(args)
    )


def student_divergence_hint(args) -> str:
    return (
        f"Likely cause: the student's learning_rate={args.learning_rate:g} is too high for this model (the paper "
        "uses 1e-6); lower it, clip harder with max_grad_norm, or resume from an earlier checkpoint."
        + _precision_hint(args)
    )


def student_sampling_divergence(error: BaseException, args) -> str:
    """The message for a student whose weights diverged before the guard could stop it (seen while sampling)."""
    return (
        f"The student's sampling probabilities contain NaN/inf: its weights have diverged ({error}). "
        + student_divergence_hint(args)
    )


def is_sampling_divergence(error: BaseException) -> bool:
    """torch.multinomial's error on a NaN/inf probability tensor (transformers' sampling)."""
    text = str(error)
    return isinstance(error, RuntimeError) and "probability tensor contains" in text and ("nan" in text or "inf" in text)
