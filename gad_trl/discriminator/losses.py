"""Discriminator losses of GAD (docs/algorithm.md, "Discriminator losses").

All variants take raw last-token scores of pairs (teacher response of a prompt, one student completion of the same
prompt) and return the mean loss over pairs plus a dict of detached floats for logging. With k teacher answers per
prompt every completion is paired with each of them; pair weights of 1/k make every completion count once (the
loss averages over its prompt's answers, then over completions), so k=1 is the paper's loss exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("bradley_terry", "hinge", "two_sided_hinge", "balanced")

DEFAULT_CONSTANTS = {
    "margin": 1.0,  # m: lower bound on d = t - s (hinge variants)
    "upper_margin": 5.0,  # M: upper bound on d (two_sided_hinge)
    "temperature": 2.0,  # T: the soft BCE term reads clip(d / T)
    "clip": 10.0,  # the soft BCE term's logit is clipped to [-clip, clip]
    "hinge_bce_weight": 0.5,  # weight of the soft BCE term in both hinge variants
    "balanced_bce_weight": 1.5,
    "score_reg_weight": 0.005,  # balanced: weight of mean(t^2) + mean(s^2)
    "overconfidence_weight": 0.5,  # balanced: weight of relu(d - overconfidence_margin)^2
    "overconfidence_margin": 1.5,
}


def _mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if w is None else (x * w).sum() / w.sum()


def _std(x: torch.Tensor, w: torch.Tensor | None) -> float:
    if x.numel() < 2:
        return 0.0
    if w is None:
        return x.std().item()
    m = _mean(x, w)
    return _mean((x - m).pow(2), w).sqrt().item()


def _soft_bce(d: torch.Tensor, temperature: float, clip: float, w: torch.Tensor | None = None) -> torch.Tensor:
    return _mean(-F.logsigmoid(torch.clamp(d / temperature, -clip, clip)), w)


def discriminator_loss(
    teacher_scores: torch.Tensor,
    student_scores: torch.Tensor,
    loss_type: str = "bradley_terry",
    weights: torch.Tensor | None = None,
    **constants: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the discriminator on paired scores.

    Args:
        teacher_scores: `(N,)` raw scores of the teacher response of each pair's prompt.
        student_scores: `(N,)` raw scores of the student completions; pair `i` is `(teacher_scores[i], student_scores[i])`.
        loss_type: one of `bradley_terry` (paper, default), `hinge`, `two_sided_hinge`, `balanced`.
        weights: `(N,)` non-negative pair weights (None = all equal): every mean below, of the loss terms and of the
            metrics, is weighted by them. GAD passes 1/k for the k pairs of a completion whose prompt has k answers.
        **constants: overrides of `DEFAULT_CONSTANTS` (`margin`, `upper_margin`, `temperature`, `clip`,
            `hinge_bce_weight`, `balanced_bce_weight`, `score_reg_weight`, `overconfidence_weight`,
            `overconfidence_margin`).

    Returns:
        `(loss, info)`: the scalar loss (differentiable) and the metrics of docs/algorithm.md as floats: `loss`, `accuracy`,
        `teacher_score_mean/std`, `student_score_mean/std`, `score_diff`, plus each term of the variant.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown discriminator loss_type={loss_type!r}; choose one of {', '.join(LOSS_TYPES)}.")
    unknown = set(constants) - set(DEFAULT_CONSTANTS)
    if unknown:
        raise TypeError(
            f"Unknown discriminator loss constant(s) {sorted(unknown)}; valid ones are {sorted(DEFAULT_CONSTANTS)}."
        )
    if teacher_scores.shape != student_scores.shape or teacher_scores.dim() != 1:
        raise ValueError(
            "teacher_scores and student_scores must be 1-D tensors of the same length (one entry per pair), got "
            f"shapes {tuple(teacher_scores.shape)} and {tuple(student_scores.shape)}."
        )
    if teacher_scores.numel() == 0:
        raise ValueError("discriminator_loss got no pairs: both score tensors are empty.")
    if weights is not None:
        if weights.shape != teacher_scores.shape:
            raise ValueError(f"weights must have one entry per pair, got shape {tuple(weights.shape)} for "
                             f"{teacher_scores.numel()} pairs.")
        weights = weights.to(device=teacher_scores.device, dtype=torch.float32)
    c = {**DEFAULT_CONSTANTS, **constants}
    t, s, w = teacher_scores.float(), student_scores.float(), weights
    d = t - s

    terms: dict[str, torch.Tensor] = {}
    if loss_type == "bradley_terry":
        terms["bt_loss"] = _mean(-F.logsigmoid(d), w)
        loss = terms["bt_loss"]
    elif loss_type == "hinge":
        terms["hinge_loss"] = _mean(F.relu(c["margin"] - d), w)
        terms["bce_loss"] = _soft_bce(d, c["temperature"], c["clip"], w)
        loss = terms["hinge_loss"] + c["hinge_bce_weight"] * terms["bce_loss"]
    elif loss_type == "two_sided_hinge":
        terms["hinge_loss"] = _mean(F.relu(c["margin"] - d), w)
        terms["upper_hinge_loss"] = _mean(F.relu(d - c["upper_margin"]), w)
        terms["bce_loss"] = _soft_bce(d, c["temperature"], c["clip"], w)
        loss = terms["hinge_loss"] + terms["upper_hinge_loss"] + c["hinge_bce_weight"] * terms["bce_loss"]
    else:  # balanced
        terms["bce_loss"] = _soft_bce(d, c["temperature"], c["clip"], w)
        terms["score_reg_loss"] = (_mean(t.pow(2), w) + _mean(s.pow(2), w))
        terms["overconfidence_loss"] = _mean(F.relu(d - c["overconfidence_margin"]).pow(2), w)
        loss = (
            c["balanced_bce_weight"] * terms["bce_loss"]
            + c["score_reg_weight"] * terms["score_reg_loss"]
            + c["overconfidence_weight"] * terms["overconfidence_loss"]
        )

    with torch.no_grad():
        info = {
            "loss": loss.item(),
            "accuracy": _mean((d > 0).float(), w).item(),
            "teacher_score_mean": _mean(t, w).item(),
            "teacher_score_std": _std(t, w),
            "student_score_mean": _mean(s, w).item(),
            "student_score_std": _std(s, w),
            "score_diff": _mean(d, w).item(),
            **{name: value.item() for name, value in terms.items()},
        }
    return loss, info
