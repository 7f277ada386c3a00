"""An in-process cluster (SchedulerServer + Workers) for the client tests, and task functions.

The task functions live here, at module level, so they are pickled by
reference; the workers run in the test process, so a task can wait on a
:data:`GATES` event that the test sets (deterministic ordering, no sleeps).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from dsched._scheduler_server import SchedulerServer
from sched_core._states import state_name
from dsched._worker import Worker

GATES: dict[str, threading.Event] = {}
RAN: list[str] = []  # names recorded by ``record`` in the order tasks ran


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def double(x: int) -> int:
    return 2 * x


def total(values: Any) -> int:
    """Sum of the numbers in nested lists and dict values."""
    if isinstance(values, dict):
        return sum(total(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(total(v) for v in values)
    return int(values)


def fail(message: str) -> None:
    raise ValueError(message)


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


def gated(name: str, value: Any) -> Any:
    """Return ``value`` once the test opens gate ``name`` (at most 10 s)."""
    if not gate(name).wait(10):
        raise TimeoutError(f"gate {name!r} was never opened")
    return value


def record(name: str) -> str:
    RAN.append(name)
    return name


def open_all_gates() -> None:
    for event in GATES.values():
        event.set()
    GATES.clear()


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def serve_cluster(
    n_workers: int, nthreads: int, *, task_status: TaskStatus[tuple[SchedulerServer, list[Worker]]]
) -> None:
    async with SchedulerServer() as server, contextlib.AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(Worker(server.address, nthreads=nthreads, name=f"w{i}"))
            for i in range(n_workers)
        ]
        await wait_until(lambda: len(server.state.workers) == n_workers)
        task_status.started((server, workers))
        await anyio.sleep_forever()


class BackgroundCluster:
    """A scheduler and workers running in a portal thread (for the synchronous client)."""

    def __init__(
        self, portal: BlockingPortal, server: SchedulerServer, workers: list[Worker], running: Future[None]
    ) -> None:
        self.portal = portal
        self._running = running
        self.server = server
        self.workers = workers
        self.address = server.address

    def stop(self) -> None:
        """Stop the scheduler and the workers (as if the cluster went away)."""
        open_all_gates()
        self._running.cancel()
        with contextlib.suppress(CancelledError):
            self._running.result(timeout=10)

    def known(self, key: str) -> bool:
        """Whether the scheduler still has ``key`` (read on the scheduler's loop)."""
        return bool(self.portal.call(lambda: key in self.server.state.tasks))

    def task_state(self, key: str) -> str:
        """The scheduler's state of ``key`` ("forgotten" if it does not know it); call on its loop."""
        ts = self.server.state.tasks.get(key)
        return "forgotten" if ts is None else state_name(ts.state)

    def holders(self, key: str) -> list[str]:
        def read() -> list[str]:
            ts = self.server.state.tasks.get(key)
            return [ws.address for ws in ts.who_has] if ts is not None and ts.who_has else []

        return list(self.portal.call(read))

    def wait_until(self, predicate: Any, timeout: float = 5.0) -> None:
        """Poll ``predicate()`` on the scheduler's loop until true."""
        self.portal.call(wait_until, predicate, timeout)


@contextlib.contextmanager
def background_cluster(n_workers: int = 2, nthreads: int = 2) -> Iterator[BackgroundCluster]:
    with start_blocking_portal(backend="asyncio") as portal:
        future, (server, workers) = portal.start_task(serve_cluster, n_workers, nthreads)
        cluster = BackgroundCluster(portal, server, workers, future)
        try:
            yield cluster
        finally:
            cluster.stop()
