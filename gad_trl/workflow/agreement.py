"""Does the discriminator's reward track quality? The within-prompt reward-judge AUC.

GRPO only uses rewards *within* a prompt's group (advantages are normalised per group), so the agreement that matters
is within a prompt: over every pair of completions of the same prompt that the judge scores differently, the fraction
the discriminator orders the same way (a tie in the discriminator counts one half). 0.5 = no signal, 1 = the judge's
order. Pairs the judge ties carry no order and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence


def within_prompt_auc(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict:
    """`groups`: per prompt, (discriminator scores, judge scores) of its completions, in the same order.

    Returns `{"auc": float or None, "pairs": int, "prompts": int}`: the AUC over all ordered pairs, how many pairs it
    counts and how many prompts contributed one; `auc` is None when no prompt has two completions the judge tells
    apart (the number would mean nothing)."""
    agree, pairs, prompts = 0.0, 0, 0
    for number, (scores, judged) in enumerate(groups):
        if len(scores) != len(judged):
            raise ValueError(
                f"Prompt {number}: {len(scores)} discriminator scores for {len(judged)} judge scores; give one of each "
                "per completion."
            )
        counted = 0
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                if judged[i] == judged[j]:
                    continue
                better, worse = (i, j) if judged[i] > judged[j] else (j, i)
                agree += 1.0 if scores[better] > scores[worse] else 0.5 if scores[better] == scores[worse] else 0.0
                counted += 1
        pairs += counted
        prompts += counted > 0
    return {"auc": agree / pairs if pairs else None, "pairs": pairs, "prompts": prompts}
