"""Warnings when discriminator metrics leave the healthy ranges of docs/algorithm.md ("Monitoring"). They are
observations from 7-8B runs: warnings only, never hard stops."""

from __future__ import annotations


def unhealthy_signals(info: dict[str, float], loss_type: str) -> dict[str, str]:
    """Map of signal name -> message for each metric outside its healthy range."""
    signals = {}
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
    return signals


class HealthMonitor:
    """Emits each kind of warning when it first appears, then again at most every `every` checks while it lasts."""

    def __init__(self, logger, every: int = 50):
        self.logger = logger
        self.every = every
        self._last_warned: dict[str, int] = {}
        self._checks = 0

    def check(self, info: dict[str, float], loss_type: str, step: int) -> list[str]:
        self._checks += 1
        emitted = []
        signals = unhealthy_signals(info, loss_type)
        for name in list(self._last_warned):
            if name not in signals:
                del self._last_warned[name]
        for name, message in signals.items():
            last = self._last_warned.get(name)
            if last is None or self._checks - last >= self.every:
                self._last_warned[name] = self._checks
                self.logger.warning(f"[GAD health, step {step}] {message}")
                emitted.append(name)
        return emitted
