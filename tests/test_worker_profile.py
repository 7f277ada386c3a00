"""Workers' profiles: in-process workers share one sampling thread, each sees only its own tasks."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
import pytest

from dsched import _protocol as p
from dsched._sampler_alarm import DRIVER_ENV
from dsched._shared_sampler import thread_name
from dsched._worker_profile import WorkerProfiler


def spin_here(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(1000))


def spin_there(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(1000))


def names(node: dict[str, Any]) -> set[str]:
    out = {node["name"]}
    for child in node["children"]:
        out |= names(child)
    return out


def sampler_threads(interval: float) -> list[threading.Thread]:
    """The sampling threads of this interval (other tests' samplers may still be stopping)."""
    return [t for t in threading.enumerate() if t.name == thread_name(interval)]


def test_workers_of_one_process_share_a_sampler_and_keep_their_own_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DRIVER_ENV, "thread")  # started on the main thread: SIGALRM would drive it
    stop = threading.Event()
    threads = [threading.Thread(target=f, args=(stop,)) for f in (spin_here, spin_there)]
    for t in threads:
        t.start()
    a_running: dict[int, str] = {}
    b_running: dict[int, str] = {}
    a, b = WorkerProfiler(a_running, 0.002), WorkerProfiler(b_running, 0.002)
    before = len(sampler_threads(0.002))
    a.start()
    b.start()
    try:
        assert len(sampler_threads(0.002)) == before + 1  # one sampling thread for both
        a_running[threads[0].ident or 0] = "spin-here-1"
        b_running[threads[1].ident or 0] = "spin-there-2"
        deadline = time.monotonic() + 30
        while a.tree(None, None, "spin").count < 20 or b.tree(None, None, "spin").count < 20:
            assert time.monotonic() < deadline, "no samples"
            time.sleep(0.01)
        mine = a.tree(None, None, "spin").to_json()
        theirs = b.tree(None, None, "spin").to_json()
        assert "spin_here" in names(mine) and "spin_there" not in names(mine)
        assert "spin_there" in names(theirs) and "spin_here" not in names(theirs)
        # Without a prefix, a worker's profile also has the event loop (here: this thread).
        everything = a.tree(None, None, None).to_json()
        assert "test_workers_of_one_process_share_a_sampler_and_keep_their_own_tasks" in names(everything)
        assert "spin_there" not in names(everything)
        reply = a.answer(p.GetProfile(5, None, None, "spin-here"))
        assert reply.request == 5 and "spin_here" in names(msgspec.json.decode(reply.tree))
    finally:
        stop.set()
        a.stop()
        assert len(sampler_threads(0.002)) == before + 1  # b still samples
        b.stop()
        for t in threads:
            t.join()
    assert len(sampler_threads(0.002)) == before  # the last one out stops it
    assert a.tree(None, None, None).count == 0  # stopped: nothing more to say
