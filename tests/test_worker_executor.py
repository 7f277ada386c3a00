"""The worker's task threads: outcomes reach the loop in batches, none is held back behind an empty queue."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import anyio
import pytest

import sched_core as sc
from dsched._serialize import dumps_function
from dsched._worker_executor import CALL_PICKLED, FunctionCache, TaskExecutor

pytestmark = pytest.mark.anyio

GATE = threading.Event()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def quick(x: int) -> int:
    return x + 1


def nap(x: int) -> int:
    time.sleep(0.0003)  # releases the GIL: the loop could take each outcome as it comes
    return x + 1


def gated(x: int) -> int:
    if not GATE.wait(10):
        raise TimeoutError("the test never opened the gate")
    return x


def spec(ref: int, x: int) -> tuple[Any, ...]:
    return (ref, pickle.dumps(((x,), None)), False, CALL_PICKLED, [], 0)


class Deliveries:
    """What the executor delivered to the loop, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[list[sc.WorkerEvent]] = []

    def __call__(self, events: list[sc.WorkerEvent]) -> None:
        self.batches.append(events)

    def keys(self) -> list[str]:
        return [e.key for batch in self.batches for e in batch]  # type: ignore[attr-defined]

    async def wait_for(self, n: int) -> None:
        with anyio.fail_after(10):
            while len(self.keys()) < n:
                await anyio.sleep(0.001)


def executor(nthreads: int, deliveries: Deliveries) -> tuple[TaskExecutor, dict[str, object]]:
    functions = FunctionCache()
    functions.define(0, dumps_function(quick))
    functions.define(1, dumps_function(gated))
    functions.define(2, dumps_function(nap))
    data: dict[str, object] = {}
    return TaskExecutor(nthreads, data, functions, deliveries), data


async def test_queued_short_tasks_are_reported_in_batches() -> None:
    deliveries = Deliveries()
    ex, data = executor(1, deliveries)
    try:
        n = 200
        for i in range(n):
            ex.submit(f"k{i}", spec(2, i))
        await deliveries.wait_for(n)
        assert sorted(deliveries.keys()) == sorted(f"k{i}" for i in range(n))
        assert all(isinstance(e, sc.ExecuteSuccessEvent) for batch in deliveries.batches for e in batch)
        assert data["k7"] == 8
        # Reported together while more were queued: far fewer wake-ups than tasks.
        assert len(deliveries.batches) < n // 4
    finally:
        ex.close()


async def test_an_outcome_is_reported_at_once_when_nothing_else_is_queued() -> None:
    # Two threads: the gated task occupies one; the quick one, finished with an empty
    # queue behind it, must not wait for the gated one.
    GATE.clear()
    deliveries = Deliveries()
    ex, _ = executor(2, deliveries)
    try:
        ex.submit("slow", spec(1, 5))
        ex.submit("fast", spec(0, 1))
        await deliveries.wait_for(1)
        assert deliveries.keys() == ["fast"]
        GATE.set()
        await deliveries.wait_for(2)
        assert deliveries.keys() == ["fast", "slow"]
    finally:
        GATE.set()
        ex.close()


async def test_each_task_of_a_chain_is_reported_before_the_next_is_handed_over() -> None:
    deliveries = Deliveries()
    ex, _ = executor(1, deliveries)
    try:
        for i in range(20):
            ex.submit(f"step{i}", spec(0, i))
            await deliveries.wait_for(i + 1)  # a dependent can only be submitted after this
        assert [len(batch) for batch in deliveries.batches] == [1] * 20
    finally:
        ex.close()
