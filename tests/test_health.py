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
    monitor = HealthMonitor(log, every=3)
    with caplog.at_level(logging.WARNING, logger="gad-health-test"):
        emitted = [monitor.check({"accuracy": 0.99, "score_diff": 0.3}, "bradley_terry", step) for step in range(7)]
    assert emitted == [["accuracy_high"], [], [], ["accuracy_high"], [], [], ["accuracy_high"]]
    assert "too strong" in caplog.text
