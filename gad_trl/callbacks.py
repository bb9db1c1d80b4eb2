"""Trainer callbacks for GAD runs."""

from __future__ import annotations

from transformers import TrainerCallback

# Log key -> short label shown in the progress bar's postfix, in display order.
PROGRESS_POSTFIX_KEYS: dict[str, str] = {
    "discriminator/accuracy": "d_acc",
    "reward": "reward",
    "discriminator/score_diff": "d_gap",
}


def _find_training_bar(max_steps: int):
    """The newest open tqdm bar whose total is `max_steps`: the one transformers' `ProgressCallback` just opened."""
    try:
        from tqdm.std import tqdm as std_tqdm
    except ImportError:  # pragma: no cover - tqdm is a transformers dependency
        return None
    with std_tqdm.get_lock():
        bars = [
            bar
            for bar in list(getattr(std_tqdm, "_instances", []))
            if getattr(bar, "total", None) == max_steps and not getattr(bar, "disable", False)
        ]
    if not bars:
        return None
    return max(bars, key=lambda bar: getattr(bar, "start_t", 0.0))


class GADProgressCallback(TrainerCallback):
    """Shows the discriminator accuracy and the reward in the training progress bar.

    After every log, the postfix of transformers' training bar is set from the latest logs:
    `discriminator/accuracy` as `d_acc`, `reward`, and `discriminator/score_diff` as `d_gap`, so a glance tells
    whether the discriminator saturates (d_acc near 1) or is fooled (d_acc below 0.5). Values missing from a log
    (e.g. an evaluation log) keep their previous value. It adds no bar of its own: it finds the bar the default
    `ProgressCallback` opened (the newest open tqdm bar of `max_steps` steps), and does nothing without one
    (`disable_tqdm=True`).
    """

    def __init__(self, keys: dict[str, str] | None = None):
        self.keys = dict(PROGRESS_POSTFIX_KEYS if keys is None else keys)
        self.postfix: dict[str, str] = {}
        self.bar = None

    def update_postfix(self, logs: dict) -> dict[str, str]:
        """Update (and return) the postfix from a log dict."""
        for key, label in self.keys.items():
            value = logs.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.postfix[label] = f"{value:.3g}"
        return self.postfix

    def on_train_begin(self, args, state, control, **kwargs):
        self.postfix = {}
        self.bar = _find_training_bar(state.max_steps) if state.is_world_process_zero else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.update_postfix(logs)
        if self.bar is not None and self.postfix:
            self.bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar = None


def default_callbacks() -> list[TrainerCallback]:
    """Callbacks `GADTrainer` adds to every run."""
    return [GADProgressCallback()]
