"""SIGALRM-driven sampling on the main thread: when it is chosen, what it samples, what it gives back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsched import _sampler_alarm
from dsched._profiler import Sampler
from dsched._sampler_alarm import DRIVER_ENV, AlarmDriver, choose_driver


@pytest.fixture(autouse=True)
def alarm_untouched(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(DRIVER_ENV, raising=False)
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    yield
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, "a test left a SIGALRM handler"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "a test left the timer armed"


def names(node: dict[str, Any]) -> set[str]:
    out = {node["name"]}
    for child in node["children"]:
        out |= names(child)
    return out


def in_thread(function: Any) -> Any:
    """``function()`` called on another thread: its result, or its exception raised here."""
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def busy_on_main(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(200))


def test_the_main_thread_gets_the_signal_driver_other_threads_a_thread() -> None:
    assert choose_driver("auto") == "signal"
    assert choose_driver("thread") == "thread"
    assert in_thread(lambda: choose_driver("auto")) == "thread"
    with pytest.raises(RuntimeError, match="not on the main thread"):
        in_thread(lambda: choose_driver("signal"))


def test_a_thread_unless_the_process_is_dsched_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sampler_alarm, "_process_default", "thread")
    assert choose_driver() == "thread"  # a program running a scheduler itself keeps its SIGALRM
    _sampler_alarm.use_signal_by_default()  # what dsched scheduler and dsched worker call
    assert choose_driver() == "signal"
    monkeypatch.setenv(DRIVER_ENV, "thread")
    assert choose_driver() == "thread"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")
def test_dsched_scheduler_samples_from_sigalrm(tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k != DRIVER_ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "dsched", "scheduler", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(scheduler_file)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.05)
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        assert caught >> (signal.SIGALRM - 1) & 1, "SIGALRM has no handler in dsched scheduler"
        threads = {path.read_text().strip() for path in Path(f"/proc/{process.pid}/task").glob("*/comm")}
        assert not any(name.startswith("dsched-profiler") for name in threads), threads
    finally:
        process.terminate()
        process.wait(60)


def test_the_environment_overrides_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DRIVER_ENV, "thread")
    assert choose_driver("signal") == "thread"
    monkeypatch.setenv(DRIVER_ENV, "sometimes")
    with pytest.raises(ValueError, match=DRIVER_ENV):
        choose_driver()


def test_sigalrm_in_use_means_a_thread() -> None:
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    try:
        assert choose_driver() == "thread"
        with pytest.raises(RuntimeError, match="in use"):
            choose_driver("signal")
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_a_signal_driven_sampler_samples_the_main_thread_where_it_was_interrupted() -> None:
    main = threading.get_ident()
    with Sampler(lambda: {main: "main"}, interval=0.002, driver="auto") as sampler:
        assert sampler.driver == "signal"
        busy_on_main(0.3)
    tree = sampler.tree().to_json()
    assert tree["count"] >= 20, tree["count"]
    sampled = names(tree)
    assert "busy_on_main" in sampled
    assert not sampled & {"_on_alarm", "sample_once", "_collect"}  # never the handler's own frames
    assert sampler.overhead().samples >= 20


def test_an_alarm_over_the_samplers_own_locked_section_skips_the_sample() -> None:
    main = threading.get_ident()
    with Sampler(lambda: {main: "main"}, interval=0.001, driver="auto") as sampler:
        with sampler._lock:  # what tree() or record() on the main thread would hold
            busy_on_main(0.1)  # alarms arrive here: a blocking handler would deadlock
        assert sampler._skipped > 0
        busy_on_main(0.1)
    assert sampler.tree().count > 0  # sampling went on once the lock was free


def test_stopping_from_another_thread_disarms_and_leaves_a_handler_that_ignores_alarms() -> None:
    sampler = Sampler(lambda: {}, interval=0.001, driver="auto")
    sampler.start()
    assert sampler.driver == "signal"
    in_thread(sampler.stop)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and not sampler.running
    handler = signal.getsignal(signal.SIGALRM)
    assert callable(handler)
    signal.raise_signal(signal.SIGALRM)  # a stray alarm does nothing (the default would kill us)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_the_driver_follows_the_interval_it_is_asked_for() -> None:
    asked: list[float] = []
    intervals = iter([0.002, 0.004])

    def tick(frame: Any) -> float:
        asked.append(signal.getitimer(signal.ITIMER_REAL)[1])
        return next(intervals, 0.004)

    driver = AlarmDriver(tick)
    driver.start(0.001)
    try:
        deadline = time.monotonic() + 10
        while len(asked) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        driver.stop()
    assert asked[0] == pytest.approx(0.001) and asked[1] == pytest.approx(0.002)
    assert asked[2] == pytest.approx(0.004) and asked[3] == pytest.approx(0.004)


def test_a_sampler_restarted_elsewhere_takes_the_driver_of_its_new_start() -> None:
    sampler = Sampler(lambda: {}, interval=0.001, driver="auto")
    sampler.start()
    assert sampler.driver == "signal" and sampler.running
    sampler.stop()
    assert not sampler.running
    in_thread(sampler.start)  # not the main thread: a sampling thread this time
    try:
        assert sampler.driver == "thread" and sampler.running
    finally:
        sampler.stop()
    assert not sampler.running
