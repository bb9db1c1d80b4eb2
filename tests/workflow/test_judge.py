"""`gad_trl.workflow.judge`: the review's score line, the per-prompt score and the interval."""

import statistics

import pytest

from gad_trl.workflow import judge as J


def test_parse_ratings():
    assert J.parse_ratings("8 6\nbecause") == (8.0, 6.0)
    assert J.parse_ratings("\n 7.5, 9 \nx") == (7.5, 9.0)
    assert J.parse_ratings("Assistant 1: 8\nAssistant 2: 6") is None  # FastChat's rule: first line only
    assert J.parse_ratings("0 5") is None and J.parse_ratings("8 11") is None and J.parse_ratings("") is None
    assert J.relative_score(8, 8) == 50
    assert J.mean_ci95([50.0])["ci95_low"] is None


def test_mean_ci95_is_the_normal_interval():
    values = [30.0, 45.0, 50.0, 62.5]
    stats = J.mean_ci95(values)
    half = 1.959964 * statistics.stdev(values) / len(values) ** 0.5
    assert stats["mean"] == pytest.approx(statistics.mean(values))
    assert (stats["ci95_low"], stats["ci95_high"]) == pytest.approx((stats["mean"] - half, stats["mean"] + half))
    assert J.mean_ci95([])["mean"] is None
