"""The scheduler's dashboard source: the profiler's own metrics."""

from __future__ import annotations

import threading
import time

from dsched._dashboard_source import _profiler_metrics
from dsched._profiler import Sampler


def test_no_profiler_means_no_samples_and_a_running_one_reports_its_driver() -> None:
    off = _profiler_metrics(None)
    assert [m.name for m in off] == [
        "dsched_profiler_samples_total", "dsched_profiler_skipped_total",
        "dsched_profiler_busy_seconds_total", "dsched_profiler_interval_seconds",
    ]
    assert all(m.samples == [] for m in off)

    busy = threading.Event()
    thread = threading.Thread(target=busy.wait)
    thread.start()
    try:
        with Sampler(lambda: {thread.ident or 0: "x"}, interval=0.002, driver="thread") as sampler:
            deadline = time.monotonic() + 30
            while sampler.overhead().samples < 5:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            metrics = {m.name: m.samples for m in _profiler_metrics(sampler)}
    finally:
        busy.set()
        thread.join()
    [(labels, samples)] = metrics["dsched_profiler_samples_total"]
    assert labels == {"driver": "thread"} and samples >= 5
    assert metrics["dsched_profiler_skipped_total"] == [({"driver": "thread"}, 0.0)]
    [(_, interval)] = metrics["dsched_profiler_interval_seconds"]
    assert interval >= 0.002  # longer only in a process of more than 32 threads
    assert metrics["dsched_profiler_busy_seconds_total"][0][1] > 0
