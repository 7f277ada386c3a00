"""One measurement of the runtime benchmark, run inside a fresh process.

``measure(spec)`` starts the cluster the workload needs, warms it up with one
small run of the same workload, runs it ``repeats`` times and returns the raw
numbers; runtime_bench.py spawns one process per measurement (``--child``), so
that no measurement inherits another's memory, threads or warm caches.

Every run checks its result: a wrong answer raises :class:`WrongResult`.
Timed: from the first client call (``map`` / ``get``) to the last result in
the client's hands; building a graph dict is not timed.  Where the scheduler
has its own process, its CPU time is read before the run and again after the
run's results were released and the scheduler went idle, so forgetting the
tasks is counted too.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any, TypedDict

from _runtime_systems import Cluster, ProcessStats, inprocess_cluster, subprocess_cluster
from _runtime_workloads import (
    chain_expected,
    chain_graph,
    inc,
    map_expected,
    map_inputs,
    tree_expected,
    tree_graph,
)

__all__ = ["MeasureResult", "Spec", "WrongResult", "measure", "warmup_size"]

WARMUP_MAX_TASKS = 1_000
# Before the memory readings that count: longer than dsched's scheduler waits
# before its idle-time housekeeping (1 s idle, then a gc.collect() at most
# every 5 s), so that the reading sees what the scheduler keeps, not garbage
# it has not collected yet.  The same wait for dask.
QUIET_S = 6.5


class Spec(TypedDict):
    workload: str  # "a" (map, subprocess cluster), "b" (tree), "c" (chain), "d" (map, in process)
    system: str  # see _runtime_systems.SYSTEMS
    n: int  # tasks, or steps of the chain
    workers: int
    repeats: int
    quiet: bool  # wait QUIET_S before the idle and the final memory readings


class Memory(TypedDict):
    fresh: int  # scheduler RSS once the workers joined, before any task
    idle: int  # after the warm-up run, released and idle (and quiet, if asked): the baseline
    after: list[int]  # after each measured run, released and idle (the last one quiet, if asked)
    peak: int  # the scheduler's peak RSS (VmHWM)


class MeasureResult(TypedDict):
    spec: Spec
    seconds: list[float]  # wall time of each measured run
    sched_cpu_s: list[float] | None  # scheduler CPU time of each run (own-process scheduler only)
    memory: Memory | None
    saturation: float | None  # dask's worker-saturation as its scheduler has it
    settle_s: list[float]


class WrongResult(AssertionError):
    """A run returned something other than the known answer."""


def warmup_size(n: int) -> int:
    return min(n, WARMUP_MAX_TASKS)


def _check(what: str, got: object, expected: object) -> None:
    if got != expected:
        shown = got if not isinstance(got, list) else f"a list of {len(got)} starting {got[:3]}"
        raise WrongResult(f"{what}: wrong result {shown!r}")


def _run_map(client: Any, n: int, tag: int) -> float:
    started = time.perf_counter()
    futures = client.map(inc, map_inputs(n, tag))
    results = client.gather(futures)
    elapsed = time.perf_counter() - started
    _check(f"map of {n}", results, map_expected(n, tag))
    return elapsed


def _run_tree(client: Any, n: int, tag: int) -> float:
    graph, root = tree_graph(n, tag)
    started = time.perf_counter()
    (total,) = client.get(graph, [root])
    elapsed = time.perf_counter() - started
    _check(f"tree of {len(graph)}", total, tree_expected(n))
    return elapsed


def _run_chain(client: Any, n: int, tag: int) -> float:
    graph, last = chain_graph(n, tag)
    started = time.perf_counter()
    (value,) = client.get(graph, [last])
    elapsed = time.perf_counter() - started
    _check(f"chain of {n}", value, chain_expected(n))
    return elapsed


# Each runner does one run and returns its wall time (graph construction left out).
RUNNERS: dict[str, Callable[[Any, int, int], float]] = {"a": _run_map, "b": _run_tree, "c": _run_chain, "d": _run_map}


def _settle(cluster: Cluster) -> float:
    """Wait for the scheduler to go idle once a run's results were dropped."""
    gc.collect()  # drop the client's futures now, so that their release is sent
    if cluster.scheduler is not None:
        return cluster.scheduler.settle()
    # In process: the client, scheduler and workers share this process.
    return ProcessStats(os.getpid()).settle(timeout_s=5.0)


def _measure_in(cluster: Cluster, spec: Spec) -> MeasureResult:
    runner = RUNNERS[spec["workload"]]
    stats = cluster.scheduler
    fresh = stats.memory()[0] if stats is not None else 0
    runner(cluster.client, warmup_size(spec["n"]), 0)
    _settle(cluster)
    if spec.get("quiet") and stats is not None:
        time.sleep(QUIET_S)
    idle = stats.memory()[0] if stats is not None else 0
    seconds: list[float] = []
    cpu: list[float] = []
    after: list[int] = []
    settle: list[float] = []
    for tag in range(1, spec["repeats"] + 1):
        cpu_before = stats.cpu_seconds() if stats is not None else 0.0
        seconds.append(runner(cluster.client, spec["n"], tag))
        settle.append(_settle(cluster))
        if stats is not None:
            cpu.append(stats.cpu_seconds() - cpu_before)
            if tag == spec["repeats"] and spec.get("quiet"):
                time.sleep(QUIET_S)
            after.append(stats.memory()[0])
    memory: Memory | None = None
    if stats is not None:
        memory = {"fresh": fresh, "idle": idle, "after": after, "peak": stats.memory()[1]}
    return {
        "spec": spec,
        "seconds": seconds,
        "sched_cpu_s": cpu if stats is not None else None,
        "memory": memory,
        "saturation": cluster.saturation,
        "settle_s": settle,
    }


def measure(spec: Spec) -> MeasureResult:
    """Start the workload's cluster, warm up once, run ``spec['repeats']`` times."""
    if spec["workload"] == "d":
        cluster_cm = inprocess_cluster(spec["system"], spec["workers"])
    else:
        cluster_cm = subprocess_cluster(spec["system"], spec["workers"])
    with cluster_cm as cluster:
        return _measure_in(cluster, spec)
