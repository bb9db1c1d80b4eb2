"""How the discriminator turns hidden states into one score: `last` (the value head at the last response token, the
paper's) or `mean` (over the response tokens). Recorded in the model's config so a reloaded discriminator scores the
way it was trained."""

from __future__ import annotations

from torch import nn

POOLING_CONFIG_KEY = "discriminator_pooling"
POOLINGS = ("last", "mean")


def discriminator_pooling(model: nn.Module) -> str:
    """How `model` turns hidden states into a score, as saved in its config (`last` when the config says nothing,
    e.g. a plain reward model): a reloaded discriminator scores the way it was trained."""
    pooling = getattr(getattr(model, "config", None), POOLING_CONFIG_KEY, None) or "last"
    if pooling not in POOLINGS:
        raise ValueError(
            f"The discriminator's config has {POOLING_CONFIG_KEY}={pooling!r}; supported: {', '.join(POOLINGS)}. "
            f"Fix `{POOLING_CONFIG_KEY}` in its config.json."
        )
    return pooling


def set_discriminator_pooling(model: nn.Module, pooling: str) -> None:
    """Record the pooling in the model's config (saved to config.json with the weights)."""
    if pooling not in POOLINGS:
        raise ValueError(f"discriminator_pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    setattr(model.config, POOLING_CONFIG_KEY, pooling)
