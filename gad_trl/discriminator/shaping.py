"""Reward shaping of the discriminator's score: a length-debiased, clipped reward (docs/algorithm.md, "Score shaping").

    reward = clip(score - beta * log1p(response tokens), -c, c)

`beta` = `discriminator_length_penalty` (0: the raw score, the paper's), `c` = `discriminator_score_clip` (None: no
clipping). Shaping acts on the student's reward only; the discriminator's loss reads raw scores. Both numbers are
recorded in the discriminator's config (its config.json, or an adapter folder's settings file), so a reloaded
discriminator used as a reward model gives the rewards it gave in training (`RewardShaping.of(model)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

LENGTH_PENALTY_KEY = "discriminator_length_penalty"
SCORE_CLIP_KEY = "discriminator_score_clip"


@dataclass(frozen=True)
class RewardShaping:
    length_penalty: float = 0.0
    score_clip: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.length_penalty) and self.length_penalty >= 0):
            raise ValueError(f"{LENGTH_PENALTY_KEY} must be a finite number >= 0, got {self.length_penalty}.")
        if self.score_clip is not None and not (math.isfinite(self.score_clip) and self.score_clip > 0):
            raise ValueError(f"{SCORE_CLIP_KEY} must be a positive number or None, got {self.score_clip}.")

    @property
    def active(self) -> bool:
        return self.length_penalty > 0 or self.score_clip is not None

    def __call__(self, scores: torch.Tensor, lengths) -> torch.Tensor:
        """Shaped rewards of raw `scores` for responses of `lengths` tokens (one per score)."""
        out = scores.float()
        if self.length_penalty > 0:
            lengths = torch.as_tensor(lengths, dtype=torch.float32, device=scores.device)
            if lengths.shape != out.shape:
                raise ValueError(f"Got {lengths.numel()} response lengths for {out.numel()} scores.")
            out = out - self.length_penalty * torch.log1p(lengths)
        if self.score_clip is not None:
            out = out.clamp(-self.score_clip, self.score_clip)
        return out

    def as_dict(self) -> dict:
        return {LENGTH_PENALTY_KEY: self.length_penalty, SCORE_CLIP_KEY: self.score_clip}

    @classmethod
    def from_dict(cls, values: dict) -> RewardShaping:
        return cls(float(values.get(LENGTH_PENALTY_KEY) or 0.0), values.get(SCORE_CLIP_KEY))

    @classmethod
    def from_args(cls, args) -> RewardShaping:
        return cls(args.discriminator_length_penalty, args.discriminator_score_clip)

    @classmethod
    def of(cls, model: nn.Module) -> RewardShaping:
        """The shaping recorded in a discriminator's config (none for a plain reward model)."""
        config = getattr(model, "config", None)
        return cls.from_dict({k: getattr(config, k, None) for k in (LENGTH_PENALTY_KEY, SCORE_CLIP_KEY)})

    def record(self, model: nn.Module) -> None:
        """Write the shaping into the model's config (saved to config.json with the weights)."""
        for key, value in self.as_dict().items():
            setattr(model.config, key, value)
