"""The scheduler's batch timings: the longest of the last minute, and a warning for a slow one."""

from __future__ import annotations

import logging

import pytest

from dsched._step_stats import StepStats


def test_the_longest_step_of_the_last_minute() -> None:
    stats = StepStats()
    assert stats.longest(now=1000.0) == 0.0
    stats.step_took(0.004, now=1000.0)
    stats.step_took(0.030, now=1003.0)
    stats.step_took(0.010, now=1015.0)
    assert stats.steps == 3 and stats.busy_seconds == pytest.approx(0.044)
    assert stats.longest(now=1015.0) == 0.030
    assert stats.longest(now=1055.0) == 0.030  # the window of 1000-1010 is still within the minute
    assert stats.longest(now=1065.0) == 0.010  # ... and now it is not
    assert stats.longest(now=2000.0) == 0.0
    assert stats.snapshot()["steps"] == 3


def test_a_slow_step_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    stats = StepStats()
    with caplog.at_level(logging.WARNING, logger="dsched.scheduler"):
        stats.step_took(0.5, now=10.0)
        assert not caplog.records
        stats.step_took(1.5, now=11.0)
    assert "held the scheduler's event loop for 1.50 s" in caplog.text
