"""Logging of GAD runs: the progress bar's discriminator-accuracy / reward postfix, TensorBoard and Trackio
(local, offline) through `report_to`."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from gad_trl import GADConfig
from gad_trl.callbacks import GADProgressCallback
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import REPO


def _args(output_dir, **overrides):
    kwargs = dict(
        output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=4,
        num_generations=4, max_completion_length=6, max_steps=3, logging_steps=1, save_strategy="no",
        learning_rate=1e-3, discriminator_learning_rate=1e-3, seed=0, warn_on_unhealthy_metrics=False,
    )
    kwargs.update(overrides)
    return GADConfig(**kwargs)


def test_postfix_from_logs_keeps_last_values():
    cb = GADProgressCallback()
    assert cb.update_postfix({"discriminator/accuracy": 0.625, "reward": -0.1234567, "loss": 1.0}) == {
        "d_acc": "0.625", "reward": "-0.123"}
    # An eval log without these keys keeps the previous values; a new train log replaces them.
    assert cb.update_postfix({"eval_loss": 2.0}) == {"d_acc": "0.625", "reward": "-0.123"}
    assert cb.update_postfix({"discriminator/accuracy": 0.75, "discriminator/score_diff": 0.02})["d_acc"] == "0.75"
    assert cb.postfix["d_gap"] == "0.02"


class _BarProbe(TrainerCallback):
    """Runs before the progress callbacks at train end: reads the live bar and the GAD callback."""

    def __init__(self):
        self.trainer, self.seen = None, {}

    def on_train_end(self, args, state, control, **kwargs):
        handler = self.trainer.callback_handler.callbacks
        progress = next(cb for cb in handler if type(cb) is ProgressCallback)
        gad = [cb for cb in handler if isinstance(cb, GADProgressCallback)]
        self.seen = {"num_gad": len(gad), "num_bars": sum(isinstance(cb, ProgressCallback) for cb in handler),
                     "same_bar": bool(gad) and gad[0].bar is progress.training_bar and progress.training_bar is not None,
                     "postfix": str(progress.training_bar.postfix) if progress.training_bar is not None else ""}


def test_progress_bar_shows_discriminator_accuracy_and_reward(tiny_model_dir, tmp_path):
    from gad_trl import GADTrainer

    probe = _BarProbe()
    trainer = GADTrainer(tiny_model_dir, args=_args(tmp_path, disable_tqdm=False),
                         train_dataset=Dataset.from_list(tiny_gad_rows(8)), callbacks=[probe])
    probe.trainer = trainer
    trainer.train()
    last = [e for e in trainer.state.log_history if "discriminator/accuracy" in e][-1]
    assert probe.seen["num_gad"] == 1 and probe.seen["num_bars"] == 1  # one bar, not two
    assert probe.seen["same_bar"]
    assert f"d_acc={last['discriminator/accuracy']:.3g}" in probe.seen["postfix"]
    assert f"reward={last['reward']:.3g}" in probe.seen["postfix"]


def test_report_to_tensorboard(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gad_trl import GADTrainer

    trainer = GADTrainer(tiny_model_dir, args=_args(tmp_path, report_to=["tensorboard"], disable_tqdm=True),
                         train_dataset=Dataset.from_list(tiny_gad_rows(8)))
    trainer.train()
    events = list(Path(tmp_path).rglob("events.out.tfevents*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/discriminator/accuracy", "train/reward", "train/discriminator/loss"} <= tags
    assert len(acc.Scalars("train/discriminator/accuracy")) == 3


def test_report_to_trackio_offline(tiny_model_dir, tmp_path):
    """`--report_to trackio` through the CLI logs GAD metrics to a local Trackio project; nothing leaves the machine."""
    pytest.importorskip("trackio")
    data = tmp_path / "data"
    data.mkdir()
    rows = tiny_gad_rows(8)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path / "trackio"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TRACKIO_SPACE_ID", None)
    cmd = [sys.executable, "-m", "gad_trl.cli.main", "train", "--config", str(REPO / "recipes/tiny/gad.yaml"),
           "--model_name_or_path", tiny_model_dir, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
           "--max_steps", "2", "--report_to", "trackio", "--project", "gad-test", "--disable_tqdm", "true"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    db = tmp_path / "trackio" / "gad-test.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        keys = set()
        for (blob,) in conn.execute("select metrics from metrics"):
            keys.update(json.loads(blob))
    assert {"train/discriminator/accuracy", "train/reward"} <= keys


def test_warnings_during_training_are_written_above_the_bar_and_restored_after():
    import logging
    import types

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import _TqdmLoggingHandler

    from gad_trl.callbacks import GADProgressCallback

    state = types.SimpleNamespace(max_steps=7, is_world_process_zero=True)
    bar = tqdm(total=7, disable=False)
    callback = GADProgressCallback(types.SimpleNamespace(training_bar=bar))
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        callback.on_train_begin(None, state, None)
        assert callback.bar is bar
        assert any(isinstance(h, _TqdmLoggingHandler) for h in root.handlers)  # health warnings go through tqdm.write
        callback.on_log(None, state, None, logs={"discriminator/accuracy": 0.6, "reward": 0.25})
        assert bar.postfix == "d_acc=0.6, reward=0.25"
        callback.on_train_end(None, state, None)
        assert root.handlers == before
    finally:
        bar.close()

