"""Worker memory management end to end: spilling a workload bigger than memory, pausing.

* Two worker processes with a 200 MB memory limit each hold 60 results of 10 MB
  (600 MB in all, three times what the workers may use): everything finishes
  with correct values, the workers report spilled bytes to the scheduler, and
  their spill directories are gone once the cluster is closed.
* An in-process worker whose memory measurement the test controls pauses: it
  starts no new task while paused (a task only it may run waits), keeps serving
  its data to the other worker, and runs the waiting task once it resumes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from _client_helpers import wait_until
from dsched._as_completed import wait
from dsched._client import Client
from dsched._dashboard_source import SchedulerSource
from dsched._cluster import LocalCluster
from dsched._scheduler_server import SchedulerServer
from dsched._worker import Worker
from dsched._worker_spill import SpillableStore

MB = 1_000_000
GB = 1000 * MB
# In-process workers get a limit far above what the test process really uses, so
# that only the measurements the tests inject can cross a threshold.
BIG_LIMIT = 10 * GB


def block(i: int) -> bytes:
    return bytes([i % 256]) * (10 * MB)


def describe(value: bytes) -> tuple[int, int, int]:
    return len(value), value[0], value[-1]


def test_a_workload_bigger_than_memory_spills_and_finishes(tmp_path: Path) -> None:
    local = tmp_path / "local"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, memory_limit="200MB", dashboard_address=None, local_directory=str(local)
    ) as cluster, Client(cluster) as client:
        blocks = client.map(block, range(60))  # all held: 600 MB of results on two 200 MB workers
        described = client.map(describe, blocks)
        wait(described, timeout=120)  # a hang guard only: this takes seconds
        checks = client.gather(described)
        assert checks == [(10 * MB, i % 256, i % 256) for i in range(60)]
        # The oldest results were spilled: reading them back gives the same values.
        assert client.gather([blocks[0], blocks[1], blocks[59]]) == [block(0), block(1), block(59)]

        def spilled() -> int:
            return int(client.scheduler_status()["spilled"])

        deadline = time.monotonic() + 30
        while spilled() < 100 * MB:  # at least a third went to disk (heartbeats carry the figure)
            assert time.monotonic() < deadline, f"spilled bytes reported: {spilled()}"
            time.sleep(0.1)
        assert len(list(local.iterdir())) == 2  # one spill directory per worker
        del blocks
    assert list(local.iterdir()) == []  # the workers removed their spill directories


@contextlib.asynccontextmanager
async def two_workers(limit: int) -> AsyncIterator[tuple[SchedulerServer, Worker, Worker, Client]]:
    async with (
        SchedulerServer(heartbeat_interval=0.05) as server,
        Worker(server.address, name="pausing", memory_limit=limit) as pausing,
        Worker(server.address, name="other") as other,
        Client(server.address, asynchronous=True) as client,
    ):
        await wait_until(lambda: len(server.state.workers) == 2)
        yield server, pausing, other, client


def square(x: int) -> int:
    return x * x


def first(values: list[int]) -> int:
    return values[0]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_paused_worker_starts_nothing_serves_its_data_and_resumes() -> None:
    async with two_workers(BIG_LIMIT) as (server, pausing, other, client):
        monitor = pausing.memory_monitor
        assert monitor is not None
        memory = {"now": 1 * GB}
        monitor.probe = lambda: memory["now"]
        held = client.submit(list, range(1000), workers=["pausing"])
        assert len(await held) == 1000

        memory["now"] = 8500 * MB  # past the pause threshold (80%)
        await wait_until(lambda: server.state.workers[pausing.address].paused)
        assert pausing.machine is not None and pausing.machine.paused
        assert (await client.scheduler_status())["paused_workers"] == 1
        source = SchedulerSource(server)
        assert {w["name"]: w["paused"] for w in source.workers(10)} == {"pausing": True, "other": False}
        [paused_metric] = [m for m in source.metrics() if m.name == "dsched_workers_paused"]
        assert paused_metric.samples == [({}, 1.0)]
        executed = pausing.machine.n_executed

        # New work goes to the other worker, which fetches what the paused one holds.
        results = client.map(first, [held] * 10, pure=False)
        assert await client.gather(results) == [0] * 10
        assert pausing.machine.n_executed == executed
        # A task only the paused worker may run waits, and does not fail.
        waiting = client.submit(square, 12, workers=["pausing"])
        await anyio.sleep(0.5)
        assert not waiting.done()
        assert server.state.task_state(waiting.key) == "no-worker"
        assert pausing.machine.n_executed == executed

        memory["now"] = 5 * GB  # back under the pause threshold
        with anyio.fail_after(10):
            assert await waiting == 144
        assert pausing.machine.n_executed == executed + 1
        assert not server.state.workers[pausing.address].paused
        assert monitor.n_pauses == 1


@pytest.mark.anyio
async def test_a_worker_spills_by_process_memory(tmp_path: Path) -> None:
    async with (
        SchedulerServer(heartbeat_interval=0.05) as server,
        Worker(
            server.address, memory_limit=BIG_LIMIT, memory_spill_fraction=0.61, local_directory=str(tmp_path)
        ) as worker,
        Client(server.address, asynchronous=True) as client,
    ):
        store, monitor = worker.data, worker.memory_monitor
        assert isinstance(store, SpillableStore) and monitor is not None
        futures = client.map(block, range(20))
        assert await client.gather(client.map(len, futures)) == [10 * MB] * 20
        assert store.spilled_bytes == 0  # 200 MB of results: far under the target (6 GB)

        # The process measures 6.115 GB (past spill, 6.1 GB), of which 200 MB are
        # results: least recently used results are spilled until it is under target.
        def measured() -> int:
            return 6 * GB - 85 * MB + store.memory_bytes

        monitor.probe = measured
        await wait_until(lambda: measured() <= 6 * GB)
        assert [store.is_spilled(f.key) for f in futures] == [True] * 12 + [False] * 8
        assert not monitor.paused
        picked = [futures[0], futures[11], futures[19]]
        assert await client.gather(picked) == [block(0), block(11), block(19)]  # spilled ones loaded back
        await wait_until(lambda: server.workers[worker.address].spilled > 0)
        [row] = SchedulerSource(server).workers(10)
        assert row["spilled"] > 0 and row["managed"] > 0
        [spilled_metric] = [m for m in SchedulerSource(server).metrics() if m.name == "dsched_worker_spilled_bytes"]
        assert spilled_metric.samples == [({}, float(row["spilled"]))]
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_fetched_dependencies_are_stored_and_spilled_too(tmp_path: Path) -> None:
    async with (
        SchedulerServer(heartbeat_interval=0.05) as server,
        Worker(server.address, name="holder") as holder,
        # Only the target acts (60 MB): the test process's real memory must not pause it.
        Worker(
            server.address, name="small", memory_limit=100 * MB, local_directory=str(tmp_path),
            memory_spill_fraction=False, memory_pause_fraction=False, memory_terminate_fraction=False,
        ) as small,
        Client(server.address, asynchronous=True) as client,
    ):
        await wait_until(lambda: len(server.state.workers) == 2)
        store = small.data
        assert isinstance(store, SpillableStore) and small.memory_monitor is None
        blocks = client.map(block, range(10), workers=["holder"])
        described = client.map(describe, blocks, workers=["small"])  # each fetches a 10 MB block
        assert await client.gather(described) == [(10 * MB, i, i) for i in range(10)]
        assert store.n_spilled > 0 and store.memory_bytes <= 60 * MB
        assert sum(1 for b in blocks if store.is_spilled(b.key)) >= 4  # fetched copies went to disk
        assert holder.data[blocks[0].key] == block(0)
    assert os.listdir(tmp_path) == []
