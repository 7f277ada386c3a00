"""One sampling thread per process and interval: sources attach and detach, a shared thread is read once."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import anyio
import pytest

from dsched import _sampler_alarm
from dsched._sampler_alarm import DRIVER_ENV
from dsched._shared_sampler import attach, attached, detach, thread_name


def sampler_threads(interval: float) -> list[threading.Thread]:
    """The sampling threads of this interval (other tests' samplers may still be stopping)."""
    return [t for t in threading.enumerate() if t.name == thread_name(interval)]


def spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(1000))


@pytest.fixture
def thread_driven(monkeypatch: pytest.MonkeyPatch) -> None:
    """Samplers on a thread of their own, even those started on the main thread (as these tests are)."""
    monkeypatch.setenv(DRIVER_ENV, "thread")


@pytest.mark.usefixtures("thread_driven")
def test_two_sources_share_one_thread_and_a_thread_both_want_is_filed_under_both_labels() -> None:
    stop = threading.Event()
    busy = threading.Thread(target=spin, args=(stop,))
    busy.start()
    ident = busy.ident or 0
    interval = 0.0021  # an interval of its own: no other test's sampler is shared
    before = len(sampler_threads(interval))
    one = attach(interval, "one", lambda: {ident: "one/loop"})
    try:
        two = attach(interval, "two", lambda: {ident: "two/loop", 123456789: None})
        assert one is two is attached(interval)
        assert len(sampler_threads(interval)) == before + 1
        deadline = time.monotonic() + 30
        while one.tree(None, None, "one/").count < 20 or one.tree(None, None, "two/").count < 20:
            assert time.monotonic() < deadline, "no samples"
            time.sleep(0.01)
        assert one.labels() == ["one/loop", "two/loop"]
        stats = one.overhead()
        # Read once per round, filed twice: each round records one stack for the one thread.
        assert stats.stacks <= stats.samples
        with pytest.raises(ValueError, match="attached already"):
            attach(interval, "one", lambda: {})
        detach(interval, "two")
        assert len(sampler_threads(interval)) == before + 1 and one.running
    finally:
        stop.set()
        busy.join()
        detach(interval, "one")
    assert len(sampler_threads(interval)) == before and not one.running
    with pytest.raises(KeyError):
        attached(interval)
    detach(interval, "one")  # detaching twice is harmless


@pytest.mark.usefixtures("thread_driven")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_scheduler_and_its_in_process_workers_share_one_sampler(anyio_backend: str) -> None:
    from dsched._scheduler_server import SchedulerServer
    from dsched._worker import Worker

    interval = 0.0023
    before = len(sampler_threads(interval))
    async with SchedulerServer(profile_interval=interval) as server:
        async with Worker(server.address, profile_interval=interval) as a, Worker(
            server.address, profile_interval=interval
        ) as b:
            shared = server.diagnostics.sampler
            assert shared is not None and a._profiler is not None and b._profiler is not None
            assert a._profiler.sampler is shared and b._profiler.sampler is shared
            assert len(sampler_threads(interval)) == before + 1
            deadline = time.monotonic() + 30
            # The loop thread is wanted by the scheduler and by both workers ("*/"): read once, filed twice.
            while not server.diagnostics.profile_server(None, None)["count"]:
                assert time.monotonic() < deadline, "the scheduler's loop was never sampled"
                await anyio.sleep(0.01)
            labels = shared.labels()
            assert f"{server.scheduler_id}/event-loop" in labels and "*/worker-event-loop" in labels
        assert server.diagnostics.sampler is shared and shared.running  # the workers left, the scheduler samples on
    assert len(sampler_threads(interval)) == before and not shared.running


def test_started_on_the_main_thread_the_shared_sampler_is_driven_by_sigalrm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sampler_alarm, "_process_default", "auto")  # as in dsched scheduler and worker
    stop = threading.Event()
    busy = threading.Thread(target=spin, args=(stop,))
    busy.start()
    interval = 0.0027
    before = len(sampler_threads(interval))
    main = threading.get_ident()
    sampler = attach(interval, "one", lambda: {busy.ident or 0: "one/busy", main: "one/main"})
    try:
        assert sampler.driver == "signal" and sampler.running
        assert len(sampler_threads(interval)) == before  # no thread of its own
        assert signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None)
        deadline = time.monotonic() + 30
        while sampler.tree(None, None, "one/busy").count < 20 or sampler.tree(None, None, "one/main").count < 20:
            assert time.monotonic() < deadline, "no samples"
            time.sleep(0.01)  # interrupted by the alarms, resumed each time
        assert "spin" in names(sampler.tree(None, None, "one/busy").to_json())
        # The main thread is sampled where the signal found it (this test), not in the handler.
        on_main = names(sampler.tree(None, None, "one/main").to_json())
        assert "test_started_on_the_main_thread_the_shared_sampler_is_driven_by_sigalrm" in on_main
        assert "_on_alarm" not in on_main and "sample_once" not in on_main
    finally:
        stop.set()
        busy.join()
        detach(interval, "one")
    assert not sampler.running
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # given back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def names(node: dict[str, Any]) -> set[str]:
    out = {node["name"]}
    for child in node["children"]:
        out |= names(child)
    return out
