"""Warnings when discriminator metrics leave the healthy ranges of docs/algorithm.md ("Monitoring"). They are
observations from 7-8B runs: warnings only, never hard stops."""

from __future__ import annotations

import math


def unhealthy_signals(info: dict[str, float], loss_type: str) -> dict[str, str]:
    """Map of signal name -> message for each metric outside its healthy range."""
    signals = {}
    # NaN compares false against every threshold below: name it first, or a diverged run would look healthy.
    nonfinite = sorted(k for k, v in info.items() if isinstance(v, float) and not math.isfinite(v))
    if nonfinite:
        signals["nonfinite"] = (
            f"non-finite discriminator metrics ({', '.join(nonfinite)}): it has diverged or is diverging. Lower "
            "discriminator_learning_rate (paper: 1e-6) or clip harder (discriminator_max_grad_norm)."
        )
    acc = info.get("accuracy")
    if acc is not None and acc > 0.9:
        signals["accuracy_high"] = (
            f"discriminator accuracy {acc:.2f} > 0.9: it is too strong, rewards saturate and the student's signal "
            "vanishes. Lower discriminator_learning_rate, or try discriminator_loss_type='balanced'."
        )
    elif acc is not None and acc < 0.5:
        signals["accuracy_low"] = (
            f"discriminator accuracy {acc:.2f} < 0.5: it cannot tell teacher from student; rewards are noise. "
            "Give it more critic_warmup_steps or a higher discriminator_learning_rate."
        )
    diff = info.get("score_diff")
    if diff is not None:
        if abs(diff) > 1 and loss_type == "balanced":
            signals["score_diff_high"] = f"score_diff {diff:.3f} > 1: teacher and student scores are drifting apart."
        elif abs(diff) < 1e-3:
            signals["score_diff_low"] = f"score_diff {diff:.2e} < 0.001: the discriminator gives no signal."
    if info.get("student_truncated_ratio", 0.0) > 0.8:
        signals["truncated_high"] = (
            f"{info['student_truncated_ratio']:.0%} of student completions hit max_completion_length: the "
            "discriminator then judges length, not content. Set max_completion_length near the teacher's lengths "
            "(gad-trl analyze-lengths)."
        )
    if info.get("teacher_truncated_ratio", 0.0) > 0.8:
        signals["teacher_truncated_high"] = (
            f"{info['teacher_truncated_ratio']:.0%} of teacher responses are longer than max_completion_length and "
            "were cut: the discriminator compares cut texts and the student can never match a finished answer. "
            "Raise max_completion_length (gad-trl analyze-lengths suggests one)."
        )
    return signals


# Judged only after the critic warm-up (phase 0), where a weak discriminator is expected.
_WARMUP_EXPECTED = ("accuracy_low", "score_diff_low")


class HealthMonitor:
    """Emits each kind of warning when it first appears, then again at most every `every` checks while it lasts.

    Ranges are judged on the mean of the last `window` checks of the current phase, once at least `window // 2` are
    in: one generation batch of a small run holds a few dozen pairs and its accuracy alone swings across the whole
    healthy range (0.25 then 0.75 is a discriminator at chance, not two alarms). Non-finite values are reported at
    once. A weak discriminator is not reported during the critic warm-up, whose purpose is to train it.
    """

    def __init__(self, logger, every: int = 50, window: int = 8):
        from collections import deque

        self.logger = logger
        self.every = every
        self.window = max(int(window), 1)
        self._recent: deque = deque(maxlen=self.window)
        self._phase = None
        self._last_warned: dict[str, int] = {}
        self._checks = 0

    def _smoothed(self, info: dict[str, float]) -> dict[str, float] | None:
        phase = info.get("phase")
        if phase != self._phase:
            self._recent.clear()
            self._phase = phase
        self._recent.append(info)
        if len(self._recent) < max(self.window // 2, 1):
            return None
        mean = {}
        for key in {k for entry in self._recent for k in entry}:
            values = [entry[key] for entry in self._recent if isinstance(entry.get(key), (int, float))]
            if values:
                mean[key] = sum(values) / len(values)
        return mean

    def check(self, info: dict[str, float], loss_type: str, step: int) -> list[str]:
        self._checks += 1
        emitted = []
        smoothed = self._smoothed(info)
        signals = {k: v for k, v in unhealthy_signals(info, loss_type).items() if k == "nonfinite"}
        if smoothed is not None:
            signals = {**unhealthy_signals(smoothed, loss_type), **signals}
            if info.get("phase") == 0:
                signals = {k: v for k, v in signals.items() if k not in _WARMUP_EXPECTED}
        for name in list(self._last_warned):
            if name not in signals:
                del self._last_warned[name]
        for name, message in signals.items():
            last = self._last_warned.get(name)
            if last is None or self._checks - last >= self.every:
                self._last_warned[name] = self._checks
                averaged = "" if name == "nonfinite" or self.window == 1 else f" (mean of the last {len(self._recent)} steps)"
                self.logger.warning(f"[GAD health, step {step}] {message}{averaged}")
                emitted.append(name)
        return emitted
