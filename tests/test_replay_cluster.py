"""Record a real run with worker failures, replay the recording, get the same scheduler state.

The scheduler runs here (so the test can read its core state at the moment
the recording stops); workers are processes, one of which is killed with
SIGKILL in the middle of the graph and another started in its place.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import sched_core as sc
from dsched._client import Client
from dsched._replay import replay
from dsched._scheduler_server import SchedulerServer


def slow_inc(x: int) -> int:
    time.sleep(0.01)
    return x + 1


def total(values: list[int]) -> int:
    return sum(values)


def snapshot(state: sc.SchedulerState) -> dict[str, Any]:
    """What a replay must reproduce: every task's state and placement, the workers, the clients."""
    return {
        "batch": state.batch,
        "tasks": {
            key: (
                sc.state_name(ts.state),
                sorted(ws.address for ws in ts.who_has or []),
                ts.processing_on.address if ts.processing_on is not None else None,
                ts.run_id,
                ts.retries,
            )
            for key, ts in state.tasks.items()
        },
        "workers": sorted((ws.address, ws.nthreads, ws.n_finished) for ws in state.workers.values()),
        "clients": sorted(state.clients),
        "finished": state.n_tasks_finished,
        "erred": state.n_tasks_erred,
    }


def start_worker(address: str, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # so workers import this module
    command = [sys.executable, "-P", "-m", "dsched", "worker", address, "--nthreads", "1", "--name", name]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal(backend="asyncio") as portal:
        yield portal


def test_a_recorded_run_with_a_killed_worker_replays_to_the_same_state(portal: BlockingPortal, tmp_path: Path) -> None:
    path = tmp_path / "run.dsched-recording"
    server = SchedulerServer(record=str(path), profile_interval=None)
    workers: list[subprocess.Popen[bytes]] = []
    with portal.wrap_async_context_manager(server):
        try:
            workers = [start_worker(server.address, f"w{i}") for i in range(3)]
            with Client(server.address) as client:
                client.wait_for_workers(3, timeout=30)
                n = 120
                incs = client.map(slow_inc, range(n))
                sums = [client.submit(total, incs[i : i + 10]) for i in range(0, n, 10)]
                wait_until(lambda: sum(f.done() for f in incs) >= n // 4)
                workers[0].send_signal(signal.SIGKILL)  # mid-graph: its results must be recomputed
                workers.append(start_worker(server.address, "w3"))
                assert client.gather(sums) == [sum(range(i + 1, i + 11)) for i in range(0, n, 10)]
                recorded = portal.call(_stop_and_snapshot, server)
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
    assert workers[0].returncode == -signal.SIGKILL
    assert recorded["recording"]["stopped"] == "closed" and recorded["recording"]["batches"] > 10
    assert len(recorded["state"]["tasks"]) == n + n // 10  # what the client holds
    assert recorded["state"]["finished"] >= n + n // 10  # more when the killed worker held results only it had

    result = replay(path)
    assert result.ok, result.report()
    assert result.batches == recorded["recording"]["batches"]
    assert result.n_mismatches == 0
    assert snapshot(result.state) == recorded["state"]


def test_a_recording_bounded_in_size_stops_and_still_replays(portal: BlockingPortal, tmp_path: Path) -> None:
    path = tmp_path / "small.dsched-recording"
    server = SchedulerServer(record=str(path), record_max_bytes=64 * 1024, profile_interval=None)
    workers: list[subprocess.Popen[bytes]] = []
    with portal.wrap_async_context_manager(server):
        try:
            workers = [start_worker(server.address, "w0")]
            with Client(server.address) as client:
                client.wait_for_workers(1, timeout=30)
                assert client.gather(client.map(slow_inc, range(300), pure=False)) == list(range(1, 301))
                status = client.recording_status()
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
    assert status["recording"] is False and status["stopped"] == "size-limit"
    assert path.stat().st_size <= 64 * 1024
    result = replay(path)
    assert result.ok and result.batches == status["batches"] > 0


async def _stop_and_snapshot(server: SchedulerServer) -> dict[str, Any]:
    # On the scheduler's loop, between two ticks: the state is the one the last recorded batch left.
    recording = server.diagnostics.record("stop")
    return {"recording": recording, "state": snapshot(server.state)}
