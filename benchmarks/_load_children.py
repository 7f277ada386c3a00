"""The child processes of the load benchmark (load_bench.py) and of tests/test_load.py.

``python _load_children.py workers SYSTEM ADDRESS N [NAME_PREFIX]``
    starts N one-thread workers on one event loop, all at once; prints
    ``{"ready": N, "seconds": ...}`` once they are all connected, then serves
    until its stdin closes.
``python _load_children.py clients SYSTEM ADDRESS N TASKS [ROUNDS]``
    opens N asynchronous clients at once; prints ``{"connected": N, "seconds": ...}``;
    waits for a line on stdin; then, ROUNDS times (default 1), every client at
    once maps ``inc`` over TASKS inputs of its own, sums them on the cluster,
    checks the answer and releases its futures; prints ``{"done": ..., "wrong": [...], "errors": [...], "seconds": ...}``
    and exits.

SYSTEM is ``dsched`` or ``dask``.  Many workers share a process here (as a
machine's workers share its cores), so that hundreds of them can join a
2-core machine at once; their task threads are real threads all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


def inc(x: int) -> int:
    return x + 1


def raise_fd_limit() -> None:
    """Hundreds of connections per process: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def read_stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run_workers(system: str, address: str, n: int, name_prefix: str) -> None:
    began = time.perf_counter()
    if system == "dsched":
        from dsched._worker import Worker

        workers: list[Any] = [Worker(address, nthreads=1, name=f"{name_prefix}{i}") for i in range(n)]
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(w) for w in workers))
            say(ready=n, seconds=time.perf_counter() - began)
            await read_stdin_line()
    else:
        from distributed import Worker as DaskWorker

        workers = [DaskWorker(address, nthreads=1, name=f"{name_prefix}{i}", dashboard=False) for i in range(n)]
        await asyncio.gather(*(w.start() for w in workers))
        say(ready=n, seconds=time.perf_counter() - began)
        await read_stdin_line()
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


async def one_client_workload(client: Any, first: int, tasks: int) -> int:
    futures = client.map(inc, range(first, first + tasks), pure=False)
    total = client.submit(sum, futures, pure=False)
    result: int = await total
    client_cancel: Callable[[list[Any]], Awaitable[Any]] = client.cancel
    await client_cancel([*futures, total])
    return result


async def run_clients(system: str, address: str, n: int, tasks: int, rounds: int) -> None:
    began = time.perf_counter()
    if system == "dsched":
        from dsched._client import Client
    else:
        from distributed import Client  # type: ignore[assignment]
    clients = await asyncio.gather(*(Client(address, asynchronous=True) for _ in range(n)))
    say(connected=n, seconds=time.perf_counter() - began)
    await read_stdin_line()
    began = time.perf_counter()
    wrong: list[int] = []
    errors: list[str] = []
    for round_ in range(rounds):
        outcomes = await asyncio.gather(
            *(one_client_workload(c, (round_ * n + i) * tasks, tasks) for i, c in enumerate(clients)),
            return_exceptions=True,
        )
        for i, outcome in enumerate(outcomes):
            first = (round_ * n + i) * tasks
            if isinstance(outcome, BaseException):
                errors.append(f"client {i}, round {round_}: {type(outcome).__name__}: {outcome}")
            elif outcome != sum(range(first + 1, first + tasks + 1)):
                wrong.append(i)
    seconds = time.perf_counter() - began
    say(done=n * rounds - len(wrong) - len(errors), wrong=wrong, errors=errors[:10], seconds=seconds)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def main(argv: list[str]) -> None:
    raise_fd_limit()
    role, system, address, n = argv[0], argv[1], argv[2], int(argv[3])
    if role == "workers":
        asyncio.run(run_workers(system, address, n, argv[4] if len(argv) > 4 else "load-"))
    elif role == "clients":
        asyncio.run(run_clients(system, address, n, int(argv[4]), int(argv[5]) if len(argv) > 5 else 1))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
