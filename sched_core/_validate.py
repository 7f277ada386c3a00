"""Consistency checks of the scheduler's state, for tests and debugging.

``validate_state`` walks everything (O(tasks + edges)); never call it on the
hot path.  It raises ``AssertionError`` naming the first broken invariant.
"""

from __future__ import annotations

from sched_core._model import TaskState
from sched_core._states import (
    ERRED,
    FORGOTTEN,
    MEMORY,
    N_STATES,
    NO_WORKER,
    PROCESSING,
    QUEUED,
    RELEASED,
    needs_dependencies,
)
from sched_core._transitions import TransitionEngine


def _fail(ts: TaskState, message: str) -> None:
    raise AssertionError(f"{ts!r}: {message}")


def validate_state(state: TransitionEngine) -> None:
    counts = [0] * N_STATES
    for key, ts in state.tasks.items():
        if ts.key != key:
            _fail(ts, f"stored under {key!r}")
        if ts.state == FORGOTTEN:
            _fail(ts, "forgotten but still known")
        if state.groups.get(ts.group.name) is not ts.group:
            _fail(ts, "its group is not registered")
        counts[ts.state] += 1
        _validate_counters(ts)
        _validate_placement(state, ts)
        _validate_need(ts)
    for s in range(N_STATES):
        if s != FORGOTTEN and counts[s] != state.counts.get(s):
            raise AssertionError(f"count of state {s} is {state.counts.get(s)}, actually {counts[s]}")
    for tg in state.groups.values():
        alive = sum(tg.counts.get(s) for s in range(N_STATES) if s != FORGOTTEN)
        if alive != tg.n_tasks or tg.n_tasks <= 0:
            raise AssertionError(f"{tg!r}: counts {tg.counts} disagree with n_tasks={tg.n_tasks}")
    total_threads = 0
    for address, ws in state.workers.items():
        if ws.address != address or not ws.alive or state.worker_list[ws.index] is not ws:
            raise AssertionError(f"{ws!r} is registered inconsistently")
        total_threads += ws.nthreads
        for ts in ws.processing:
            if ts.state != PROCESSING or ts.processing_on is not ws:
                _fail(ts, f"listed as processing on {ws.address}")
        nbytes = 0
        for ts in ws.has_what:
            if ts.state != MEMORY or ts.who_has is None or ws not in ts.who_has:
                _fail(ts, f"listed as held by {ws.address}")
            nbytes += max(ts.nbytes, 0)
        if nbytes != ws.nbytes:
            raise AssertionError(f"{ws!r} holds {nbytes} bytes, thinks {ws.nbytes}")
    if len(state.worker_list) != len(state.workers) or total_threads != state.total_nthreads:
        raise AssertionError("worker list or thread count out of date")
    if state.n_paused != sum(1 for ws in state.worker_list if ws.paused):
        raise AssertionError(f"n_paused is {state.n_paused}, out of date")
    if state.queued:
        for ws in state.worker_list:
            if len(ws.processing) < ws.capacity and not ws.paused:
                raise AssertionError(f"{ws!r} has room for {ws.capacity} tasks while tasks are queued")
    queued = state.queued
    if len(queued) != state.counts.queued or len(state.queue) != state.counts.queued:
        raise AssertionError(
            f"the queue holds {len(queued)} tasks and counts {len(state.queue)}; {state.counts.queued} are queued"
        )
    for priority, ts in queued.items():
        if ts.state != QUEUED or ts.priority != priority or state.tasks.get(ts.key) is not ts:
            _fail(ts, "in the queue but not queued")
    for ts in state.unrunnable:
        if ts.state != NO_WORKER or state.tasks.get(ts.key) is not ts:
            _fail(ts, "in the no-worker set but not no-worker")
    for client_id, cs in state.clients.items():
        for ts in cs.wants:
            if ts.who_wants is None or cs not in ts.who_wants or state.tasks.get(ts.key) is not ts:
                _fail(ts, f"wanted by {client_id} inconsistently")


def _validate_counters(ts: TaskState) -> None:
    n_waiting = 0
    for dep in ts.dependencies:
        if dep.state == FORGOTTEN:
            _fail(ts, f"depends on forgotten {dep.key!r}")
        if dep.state != MEMORY:
            n_waiting += 1
    if n_waiting != ts.n_waiting:
        _fail(ts, f"n_waiting={ts.n_waiting}, actually {n_waiting}")
    n_waiters = 0
    n_dependents = 0
    if ts.dependents is not None:
        for dependent in ts.dependents:
            if dependent.state != FORGOTTEN:
                n_dependents += 1
                if needs_dependencies(dependent.state):
                    n_waiters += 1
    if n_waiters != ts.n_waiters:
        _fail(ts, f"n_waiters={ts.n_waiters}, actually {n_waiters}")
    if n_dependents != ts.n_dependents:
        _fail(ts, f"n_dependents={ts.n_dependents}, actually {n_dependents}")
    if ts.who_wants is not None:
        if not ts.who_wants:
            _fail(ts, "empty who_wants list instead of None")
        for cs in ts.who_wants:
            if ts not in cs.wants:
                _fail(ts, f"who_wants has {cs.client_id} which does not want it")


def _validate_placement(state: TransitionEngine, ts: TaskState) -> None:
    s = ts.state
    if s == PROCESSING:
        ws = ts.processing_on
        if ws is None or not ws.alive or ts not in ws.processing or state.workers.get(ws.address) is not ws:
            _fail(ts, "processing, but not on a live worker")
        if ts.n_waiting != 0:
            _fail(ts, "processing before its dependencies are in memory")
    elif ts.processing_on is not None:
        _fail(ts, "not processing but has processing_on")
    if s == MEMORY:
        if ts.who_has is None or not ts.who_has:
            _fail(ts, "in memory nowhere")
        else:
            for ws in ts.who_has:
                if not ws.alive or ts not in ws.has_what:
                    _fail(ts, f"in memory on {ws.address}, which does not know it")
    elif ts.who_has is not None:
        _fail(ts, "not in memory but has holders")
    if s == NO_WORKER and ts not in state.unrunnable:
        _fail(ts, "no-worker but not in the no-worker set")
    if (s == QUEUED or s == NO_WORKER) and ts.n_waiting != 0:
        _fail(ts, "ready before its dependencies are in memory")
    if s == ERRED and ts.exception_blame is None:
        _fail(ts, "erred without blame")


def _validate_need(ts: TaskState) -> None:
    needed = ts.who_wants is not None or ts.n_waiters > 0
    if needs_dependencies(ts.state) and not needed:
        _fail(ts, "running or waiting although nothing needs it")
    if ts.state == MEMORY and not needed:
        _fail(ts, "kept in memory although nothing needs it")
    if (ts.state == RELEASED or ts.state == ERRED) and not needed and ts.n_dependents == 0:
        _fail(ts, "should have been forgotten")
