"""Where a task should run, and how much work a worker should be given ahead.

Flow control: a worker is given ``capacity`` tasks at a time (root tasks beyond
that wait in the scheduler's priority queue).  Dask's default of about two
tasks per thread, refilled every few milliseconds, makes short tasks
latency-bound: a thread idles for a round trip after every couple of tasks.  So
the queue depth per thread is sized from what we measure instead: enough
tasks to cover ``LATENCY_COVER`` round trips at the worker's observed task
duration, capped by ``max_depth`` and by a memory budget for the results those
tasks will produce.  Long tasks keep a depth of ``MIN_DEPTH`` (memory safety
for reductions); sub-millisecond tasks get deep queues (throughput).
"""

from __future__ import annotations

from typing import Final

from sched_core._model import TaskState, WorkerState

MIN_DEPTH: Final = 2
LATENCY_COVER: Final = 2.0
MIN_DURATION: Final = 1e-6
# Share of a worker's memory limit that queued-ahead results may take.
MEMORY_FRACTION: Final = 0.1


def queue_capacity(ws: WorkerState, max_depth: int) -> int:
    """How many tasks ``ws`` may have assigned at once."""
    duration = ws.duration_average
    if duration < 0.0:
        depth = MIN_DEPTH
    else:
        if duration < MIN_DURATION:
            duration = MIN_DURATION
        depth = 1 + int(LATENCY_COVER * ws.latency / duration + 0.999999)
        if depth < MIN_DEPTH:
            depth = MIN_DEPTH
        elif depth > max_depth:
            depth = max_depth
    if ws.memory_limit > 0 and ws.nbytes_average > 0.0:
        by_memory = int(ws.memory_limit * MEMORY_FRACTION / (ws.nbytes_average * ws.nthreads))
        if by_memory < 1:
            by_memory = 1
        if by_memory < depth:
            depth = by_memory
    return ws.nthreads * depth


def transfer_bytes(ts: TaskState, ws: WorkerState) -> int:
    """Bytes of ``ts``'s dependencies that ``ws`` would have to fetch."""
    total = 0
    for dep in ts.dependencies:
        holders = dep.who_has
        if holders is None or ws not in holders:
            if dep.nbytes > 0:
                total += dep.nbytes
    return total


def placement_cost(ts: TaskState, ws: WorkerState, bandwidth: float) -> float:
    """Expected seconds until ``ts`` could finish on ``ws``: queued work plus transfers."""
    return ws.occupancy / ws.nthreads + transfer_bytes(ts, ws) / bandwidth


def best_worker(ts: TaskState, candidates: list[WorkerState], bandwidth: float) -> WorkerState:
    """The candidate with the lowest placement cost; ties go to the fewest tasks."""
    best = candidates[0]
    best_cost = placement_cost(ts, best, bandwidth)
    for i in range(1, len(candidates)):
        ws = candidates[i]
        cost = placement_cost(ts, ws, bandwidth)
        if cost < best_cost or (cost == best_cost and len(ws.processing) < len(best.processing)):
            best = ws
            best_cost = cost
    return best


def dependency_holders(ts: TaskState, limit: int) -> list[WorkerState]:
    """Alive, running (not paused) workers holding any of ``ts``'s dependencies, at most ``limit``."""
    found: list[WorkerState] = []
    for dep in ts.dependencies:
        holders = dep.who_has
        if holders is None:
            continue
        for ws in holders:
            if ws.alive and not ws.paused and ws not in found:
                found.append(ws)
                if len(found) >= limit:
                    return found
    return found
