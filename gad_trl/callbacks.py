"""Trainer callbacks for GAD runs."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

# Log key -> short label shown in the progress bar's postfix, in display order.
PROGRESS_POSTFIX_KEYS: dict[str, str] = {
    "discriminator/accuracy": "d_acc",
    "reward": "reward",
    "discriminator/score_diff": "d_gap",
}


class GADProgressCallback(TrainerCallback):
    """Shows the discriminator accuracy and the reward in the training progress bar.

    After every log, the postfix of transformers' training bar is set from the latest logs:
    `discriminator/accuracy` as `d_acc`, `reward`, and `discriminator/score_diff` as `d_gap`, so a glance tells
    whether the discriminator saturates (d_acc near 1) or is fooled (d_acc below 0.5). Values missing from a log
    (e.g. an evaluation log) keep their previous value. It adds no bar of its own: it writes to the `training_bar`
    of the trainer's `ProgressCallback` (`progress`; `GADTrainer` passes its own), which that callback opens in
    `on_train_begin` before this one runs. Without one (`disable_tqdm=True`) it only keeps the postfix.
    """

    def __init__(self, progress: ProgressCallback | None = None, keys: dict[str, str] | None = None):
        self.progress = progress
        self.keys = dict(PROGRESS_POSTFIX_KEYS if keys is None else keys)
        self.postfix: dict[str, str] = {}
        self.bar = None
        self._redirect = None

    def update_postfix(self, logs: dict) -> dict[str, str]:
        """Update (and return) the postfix from a log dict."""
        for key, label in self.keys.items():
            value = logs.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.postfix[label] = f"{value:.3g}"
        return self.postfix

    def on_train_begin(self, args, state, control, **kwargs):
        self.postfix = {}
        self.bar = self.progress.training_bar if self.progress is not None and state.is_world_process_zero else None
        if self.bar is not None and self._redirect is None:
            # Warnings logged during training (GAD health checks, skipped updates) are printed above the bar
            # (tqdm.write) instead of through it, which would leave a broken half-line bar behind.
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm(tqdm_class=type(self.bar))
            self._redirect.__enter__()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.update_postfix(logs)
        if self.bar is not None and self.postfix:
            self.bar.set_postfix(self.postfix)  # redraw now: the bar line of step N shows step N's values

    def on_train_end(self, args, state, control, **kwargs):
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        self.bar = None


class OutputDirLockCallback(TrainerCallback):
    """At each log and save, checks that this process still holds `output_dir`'s lock (`run_folder.OutputDirLock.verify`:
    a deleted lock file is re-taken, another run holding it is logged as an error). Nothing when the process holds no
    lock (it does not save)."""

    def _verify(self, args):
        from .run_folder import held_lock

        lock = held_lock(args.output_dir)
        if lock is not None:
            lock.verify()

    def on_log(self, args, state, control, **kwargs):
        self._verify(args)

    def on_save(self, args, state, control, **kwargs):
        self._verify(args)


def default_callbacks(progress: ProgressCallback | None = None) -> list[TrainerCallback]:
    """Callbacks `GADTrainer` adds to every run; `progress`: the trainer's `ProgressCallback`, if any."""
    return [GADProgressCallback(progress), OutputDirLockCallback()]
