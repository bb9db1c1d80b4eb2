"""Health warnings (docs/algorithm.md, 'Monitoring') and a PEFT (LoRA) student."""

import logging

import pytest

from gad_trl.health import HealthMonitor, unhealthy_signals
from tests.gad_helpers import make_trainer, params_of, same_params


def test_unhealthy_signals_follow_the_spec_ranges():
    assert set(unhealthy_signals({"accuracy": 0.95, "score_diff": 0.2}, "bradley_terry")) == {"accuracy_high"}
    assert set(unhealthy_signals({"accuracy": 0.4, "score_diff": 0.0001}, "bradley_terry")) == {"accuracy_low", "score_diff_low"}
    assert set(unhealthy_signals({"accuracy": 0.7, "score_diff": 2.0}, "balanced")) == {"score_diff_high"}
    assert unhealthy_signals({"accuracy": 0.7, "score_diff": 0.3, "student_truncated_ratio": 0.1}, "balanced") == {}
    assert "truncated_high" in unhealthy_signals({"student_truncated_ratio": 0.9}, "bradley_terry")


def test_health_monitor_warns_once_then_rate_limits(caplog):
    log = logging.getLogger("gad-health-test")
    monitor = HealthMonitor(log, every=3)
    with caplog.at_level(logging.WARNING, logger="gad-health-test"):
        emitted = [monitor.check({"accuracy": 0.99, "score_diff": 0.3}, "bradley_terry", step) for step in range(7)]
    assert emitted == [["accuracy_high"], [], [], ["accuracy_high"], [], [], ["accuracy_high"]]
    assert "too strong" in caplog.text


def test_lora_student_trains_and_discriminator_is_full(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from datasets import Dataset

    from gad_trl import GADTrainer
    from gad_trl.testing import tiny_gad_rows
    from tests.gad_helpers import make_args

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = GADTrainer(tiny_model_dir, args=make_args(tmp_path, max_steps=2), train_dataset=Dataset.from_list(tiny_gad_rows(8)),
                         peft_config=config)
    lora0 = {k: v for k, v in params_of(trainer.model).items() if "lora_B" in k}
    disc0 = params_of(trainer.discriminator)
    trainer.train()
    lora1 = {k: v for k, v in params_of(trainer.model).items() if "lora_B" in k}
    assert lora0 and not same_params(lora0, lora1)
    assert not same_params(disc0, params_of(trainer.discriminator))
