"""`gad_trl.health`: warnings when discriminator metrics leave the healthy ranges (docs/algorithm.md, 'Monitoring')."""

import logging

from gad_trl.health import HealthMonitor, unhealthy_signals


def test_unhealthy_signals_follow_the_spec_ranges():
    assert set(unhealthy_signals({"accuracy": 0.95, "score_diff": 0.2}, "bradley_terry")) == {"accuracy_high"}
    assert set(unhealthy_signals({"accuracy": 0.4, "score_diff": 0.0001}, "bradley_terry")) == {"accuracy_low", "score_diff_low"}
    assert set(unhealthy_signals({"accuracy": 0.7, "score_diff": 2.0}, "balanced")) == {"score_diff_high"}
    assert unhealthy_signals({"accuracy": 0.7, "score_diff": 0.3, "student_truncated_ratio": 0.1}, "balanced") == {}
    assert "truncated_high" in unhealthy_signals({"student_truncated_ratio": 0.9}, "bradley_terry")


def test_health_monitor_warns_once_then_rate_limits(caplog):
    log = logging.getLogger("gad-health-test")
    monitor = HealthMonitor(log, every=3, window=1)
    with caplog.at_level(logging.WARNING, logger="gad-health-test"):
        emitted = [monitor.check({"accuracy": 0.99, "score_diff": 0.3}, "bradley_terry", step) for step in range(7)]
    assert emitted == [["accuracy_high"], [], [], ["accuracy_high"], [], [], ["accuracy_high"]]
    assert "too strong" in caplog.text


def test_health_monitor_judges_the_recent_mean_not_one_noisy_batch(caplog):
    log = logging.getLogger("gad-health-test")
    monitor = HealthMonitor(log, window=4)
    noisy = [0.25, 0.75, 0.5, 0.75, 0.25, 0.75, 0.5, 0.75]  # a discriminator near 0.55 seen through 16-pair batches
    assert all(monitor.check({"accuracy": a, "score_diff": 0.1, "phase": 2.0}, "bradley_terry", i) == []
               for i, a in enumerate(noisy))
    weak = HealthMonitor(log, window=4)
    during_warmup = [weak.check({"accuracy": 0.3, "score_diff": 0.0, "phase": 0.0}, "bradley_terry", i) for i in range(4)]
    assert during_warmup == [[], [], [], []]  # a weak discriminator is expected while it warms up
    after = [weak.check({"accuracy": 0.3, "score_diff": 0.0, "phase": 2.0}, "bradley_terry", i) for i in range(4, 8)]
    assert after[0] == [] and set(after[1]) == {"accuracy_low", "score_diff_low"}  # from window // 2 checks on
    assert weak.check({"accuracy": float("nan"), "phase": 2.0}, "bradley_terry", 9) == ["nonfinite"]  # at once


def test_health_checks_treat_nan_as_unhealthy_and_flag_cut_teacher_answers():
    signals = unhealthy_signals({"accuracy": float("nan"), "score_diff": float("nan"), "loss": float("nan")}, "bradley_terry")
    assert "nonfinite" in signals and "accuracy" in signals["nonfinite"]
    assert "teacher_truncated_high" in unhealthy_signals({"accuracy": 0.7, "score_diff": 0.1,
                                                          "teacher_truncated_ratio": 1.0}, "bradley_terry")
    assert unhealthy_signals({"accuracy": 0.7, "score_diff": 0.1, "teacher_truncated_ratio": 0.0}, "bradley_terry") == {}

