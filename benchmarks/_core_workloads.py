"""Workloads and the simulated cluster that drives ``sched_core`` for core_bench.py.

The driver plays the runtime around :class:`sched_core.SchedulerState`: every
``ComputeTask`` comes back as a ``TaskFinished`` (small result, 100 us) and
every ``ClientKeysInMemory`` as a ``ClientReleasesKeys`` for the same keys, all
in the next ``handle_events`` batch, until the scheduler has forgotten every
task.  One batch therefore holds what all workers finished in one round (up to
their queue capacity each), like a runtime that feeds the core everything that
arrived during one loop tick.
"""

from __future__ import annotations

import gc
import pickle
import time
import tracemalloc
from dataclasses import dataclass

from sched_core import (
    ClientAdded,
    ClientKeysInMemory,
    ClientReleasesKeys,
    ComputeTask,
    FreeKeys,
    GraphSubmitted,
    SchedulerEvent,
    SchedulerState,
    TaskFinished,
    TaskSpec,
    WorkerAdded,
)

CLIENT = "client-0"
RESULT_NBYTES = 64  # every simulated result is this big
TASK_DURATION = 100e-6  # seconds, as reported by the simulated workers
TREE_SPLIT = 8


def shared_run_spec() -> bytes:
    """What every task runs: one function pickled once (the core never looks inside)."""
    return pickle.dumps(abs)


@dataclass(frozen=True)
class Workload:
    key: str  # "a", "b", "c"
    kind: str  # "independent" or "tree"
    size: int  # number of tasks (for a tree: roughly)
    n_workers: int
    nthreads: int = 1

    def build(self) -> tuple[list[TaskSpec], list[str]]:
        """The submission's task specs and the keys the client wants."""
        run_spec = shared_run_spec()
        if self.kind == "independent":
            specs = [TaskSpec(f"inc-{i}", [], run_spec) for i in range(self.size)]
            return specs, [spec.key for spec in specs]
        return tree_specs(tree_leaves(self.size), run_spec), ["total"]

    def n_tasks(self) -> int:
        return self.size if self.kind == "independent" else tree_size(tree_leaves(self.size))

    def title(self) -> str:
        workers = f"{self.n_workers:,} workers x {self.nthreads} thread"
        if self.kind == "independent":
            return f"({self.key}) {self.size:,} independent tasks, {workers}, all wanted"
        leaves = tree_leaves(self.size)
        return (
            f"({self.key}) tree reduction of {self.n_tasks():,} tasks ({leaves:,} leaves, "
            f"split {TREE_SPLIT}), {workers}, only 'total' wanted"
        )


def tree_leaves(n_tasks: int) -> int:
    """Leaves of a split-``TREE_SPLIT`` reduction tree of about ``n_tasks`` tasks."""
    return max(2, n_tasks * (TREE_SPLIT - 1) // TREE_SPLIT)


def tree_size(leaves: int) -> int:
    total = leaves
    layer = leaves
    while layer > TREE_SPLIT:
        layer = (layer + TREE_SPLIT - 1) // TREE_SPLIT
        total += layer
    return total + 1


def tree_specs(leaves: int, run_spec: bytes) -> list[TaskSpec]:
    """Leaves "chunk-i", combined by TREE_SPLIT level by level ("combine-L-j") into "total"."""
    specs = [TaskSpec(f"chunk-{i}", [], run_spec) for i in range(leaves)]
    layer = [spec.key for spec in specs]
    level = 1
    while len(layer) > TREE_SPLIT:
        above: list[str] = []
        for j in range(0, len(layer), TREE_SPLIT):
            key = f"combine-{level}-{j // TREE_SPLIT}"
            specs.append(TaskSpec(key, layer[j : j + TREE_SPLIT], run_spec))
            above.append(key)
        layer = above
        level += 1
    specs.append(TaskSpec("total", layer, run_spec))
    return specs


def workloads(scale: int) -> list[Workload]:
    """The three workloads of the issue, sizes divided by ``scale`` (workers are not)."""
    return [
        Workload("a", "independent", 1_000_000 // scale, n_workers=8),
        Workload("b", "tree", 100_000 // scale, n_workers=8),
        Workload("c", "independent", 100_000 // scale, n_workers=1_000),
    ]


@dataclass
class Run:
    n_tasks: int
    core_s: float  # time spent inside handle_events
    wall_s: float  # the same plus the simulated driver
    calls: int  # handle_events calls, submission included
    max_batch: int  # most events in one call
    # Memory runs only (tracemalloc), else -1:
    peak_bytes: int = -1  # peak traced while the graph ran
    held_bytes: int = -1  # traced right after the submission was handled
    left_bytes: int = -1  # still traced once the scheduler had forgotten every task
    cycles: int = -1  # objects gc.collect() found unreachable afterwards: reference cycles left behind


def new_scheduler(workload: Workload) -> SchedulerState:
    """A scheduler with the client and the workers connected (not measured)."""
    state = SchedulerState()
    joins: list[SchedulerEvent] = [ClientAdded(CLIENT)]
    joins += [WorkerAdded(f"sim://worker-{i}", workload.nthreads) for i in range(workload.n_workers)]
    state.handle_events(joins)
    return state


def run(workload: Workload, gc_enabled: bool, trace_memory: bool = False) -> Run:
    """Submit the workload's graph and play workers and client until the scheduler is empty.

    The graph is built first (the client's and the runtime's job: not measured,
    not traced) and dropped once submitted, as the runtime drops a decoded
    message.  With ``gc_enabled=False`` the cyclic GC is off during the run;
    with ``trace_memory`` the run is traced with tracemalloc (slow).
    """
    state = new_scheduler(workload)
    gc.disable()
    specs, wanted = workload.build()
    n_tasks = len(specs)
    events: list[SchedulerEvent] = [GraphSubmitted(CLIENT, specs, wanted)]
    del specs, wanted
    gc.collect()
    if gc_enabled:
        gc.enable()
    clock = time.perf_counter_ns
    handle = state.handle_events
    core_ns = calls = max_batch = 0
    held = -1
    try:
        if trace_memory:
            tracemalloc.start()
        start = clock()
        while events:
            before = clock()
            out = handle(events)
            core_ns += clock() - before
            calls += 1
            max_batch = max(max_batch, len(events))
            if calls == 1 and trace_memory:
                held = tracemalloc.get_traced_memory()[0]
            events = []
            for ins in out:
                if isinstance(ins, ComputeTask):
                    events.append(TaskFinished(ins.worker, ins.key, RESULT_NBYTES, TASK_DURATION))
                elif isinstance(ins, ClientKeysInMemory):
                    events.append(ClientReleasesKeys(ins.client, ins.keys))
                elif not isinstance(ins, FreeKeys):
                    raise RuntimeError(f"unexpected instruction from the scheduler: {ins!r}")
        wall_ns = clock() - start
        result = Run(n_tasks, core_ns / 1e9, wall_ns / 1e9, calls, max_batch)
        if trace_memory:
            result.left_bytes, result.peak_bytes = tracemalloc.get_traced_memory()
            result.held_bytes = held
            tracemalloc.stop()
            result.cycles = gc.collect()  # the state is still alive: only garbage it left in cycles
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        gc.enable()
    if state.tasks:
        raise RuntimeError(f"the scheduler stalled with {len(state.tasks)} tasks left: {state.counts!r}")
    return result
