"""The scheduler's state and every transition of a task between states.

:class:`TransitionEngine` owns the records and the primitives that move tasks
between states while keeping the bookkeeping exact; the event handlers in
``_scheduler.py`` are written in terms of these primitives.

Invariants kept here (and checked by ``validate_state`` in tests):

- ``ts.n_waiting`` is the number of ``ts``'s dependencies not in memory.
- ``ts.n_waiters`` is the number of ``ts``'s dependents in a state that needs
  its data (waiting, queued, no-worker, processing).
- A task is *needed* while a client wants it or ``n_waiters > 0``.  Unneeded
  tasks are released, and forgotten once nothing alive depends on them.

Releasing and forgetting cascade through the graph, so instead of recursing
they go through ``_release_queue``, drained at the end of every event.  The
deferral also makes recovery simple: a task moved back to "released" while a
worker is being removed does not drop its dependencies' data, because it is
needed again before the queue is drained.
"""

from __future__ import annotations

from typing import Final

from sched_core._instructions import (
    ClientKeyErred,
    ClientKeyLost,
    ClientKeysInMemory,
    ComputeTask,
    FreeKeys,
    Instruction,
    SchedulerError,
    WorkerInstruction,
)
from sched_core._model import (
    NO_DEPENDENCIES,
    ClientState,
    StateCounts,
    TaskGroup,
    TaskPrefix,
    TaskState,
    WorkerState,
    key_group,
    key_split,
)
from sched_core._queue import TaskQueue
from sched_core._placement import best_worker, dependency_holders, queue_capacity
from sched_core._states import (
    ERRED,
    FORGOTTEN,
    MEMORY,
    NO_WORKER,
    PROCESSING,
    QUEUED,
    RELEASED,
    WAITING,
    needs_dependencies,
)

# Seconds assumed for a task whose prefix has never finished (as Dask does).
UNKNOWN_DURATION: Final = 0.5
# How many workers holding dependencies are weighed when placing a task.
MAX_CANDIDATES: Final = 32
# How many workers are sampled when any worker will do.
SAMPLE_WORKERS: Final = 8
# A root group is queued on the scheduler only if it dwarfs the cluster.
ROOTISH_FACTOR: Final = 2
ROOTISH_MAX_DEPENDENCIES: Final = 4

EMPTY_WHO_HAS: Final[dict[str, list[str]]] = {}
EMPTY_NBYTES: Final[dict[str, int]] = {}


class TransitionEngine:
    tasks: dict[str, TaskState]
    groups: dict[str, TaskGroup]
    prefixes: dict[str, TaskPrefix]
    workers: dict[str, WorkerState]
    worker_list: list[WorkerState]
    aliases: dict[str, WorkerState]
    clients: dict[str, ClientState]
    total_nthreads: int
    n_paused: int  # workers in worker_list that are paused (given no new tasks)
    generation: int
    counts: StateCounts
    queue: TaskQueue
    unrunnable: dict[TaskState, None]

    allowed_failures: int
    max_queue_depth: int
    bandwidth: float

    n_tasks_finished: int
    n_tasks_erred: int
    n_stale_messages: int
    n_recomputed: int
    n_steal_requests: int
    n_steals: int

    _out: list[Instruction]
    _pending_free: dict[WorkerState, list[str]]
    _pending_done: dict[ClientState, list[str]]
    _release_queue: list[TaskState]
    _frees_in_out: int  # FreeKeys already placed in this batch's output
    _queue_dirty: bool
    batch: int
    _round_robin: int
    _run_counter: int
    _unregistered: TaskGroup

    def __init__(self, allowed_failures: int, max_queue_depth: int, bandwidth: float) -> None:
        self.tasks = {}
        self.groups = {}
        self.prefixes = {}
        self.workers = {}
        self.worker_list = []
        self.aliases = {}
        self.clients = {}
        self.total_nthreads = 0
        self.n_paused = 0
        self.generation = 0
        self.counts = StateCounts()
        self.queue = TaskQueue()
        self.unrunnable = {}
        self.allowed_failures = allowed_failures
        self.max_queue_depth = max_queue_depth
        self.bandwidth = bandwidth
        self.n_tasks_finished = 0
        self.n_tasks_erred = 0
        self.n_stale_messages = 0
        self.n_recomputed = 0
        self.n_steal_requests = 0
        self.n_steals = 0
        self._out = []
        self._pending_free = {}
        self._pending_done = {}
        self._release_queue = []
        self._frees_in_out = 0
        self._queue_dirty = False
        self.batch = 0
        self._round_robin = 0
        self._run_counter = 0
        self._unregistered = TaskGroup("<unregistered>", TaskPrefix("<unregistered>"))

    @property
    def queued(self) -> dict[int, TaskState]:
        """The queued tasks by priority (built on demand: for inspection and tests)."""
        return self.queue.tasks()

    # ------------------------------------------------------------------
    # Records

    def _client(self, client_id: str) -> ClientState:
        cs = self.clients.get(client_id)
        if cs is None:
            cs = ClientState(client_id)
            self.clients[client_id] = cs
        return cs

    def _group_for(self, key: str) -> TaskGroup:
        name = key_group(key)
        tg = self.groups.get(name)
        if tg is None:
            prefix_name = key_split(name)
            prefix = self.prefixes.get(prefix_name)
            if prefix is None:
                prefix = TaskPrefix(prefix_name)
                self.prefixes[prefix_name] = prefix
            tg = TaskGroup(name, prefix)
            self.groups[name] = tg
        return tg

    def _register(self, ts: TaskState) -> None:
        """Count a new (released) task in; it is in ``tasks`` with its group and dependencies set."""
        ts.freed_batch = self.batch  # reports older than this incarnation are stale
        group = ts.group
        group.n_tasks += 1
        group.counts.released += 1
        self.counts.released += 1
        n_waiting = 0
        for dep in ts.dependencies:
            if dep.state != MEMORY:
                n_waiting += 1
            group.dependencies.add(dep.group)
        ts.n_waiting = n_waiting

    def _add_want(self, cs: ClientState, ts: TaskState) -> bool:
        """Record that ``cs`` holds ``ts``; False if it already did."""
        wants = ts.who_wants
        if wants is None:
            ts.who_wants = [cs]
        elif cs not in wants:
            wants.append(cs)
        else:
            return False
        cs.wants[ts] = None
        return True

    def _remove_want(self, cs: ClientState, ts: TaskState) -> bool:
        wants = ts.who_wants
        if wants is None or cs not in wants:
            return False
        wants.remove(cs)
        if not wants:
            ts.who_wants = None
        cs.wants.pop(ts, None)
        if not cs.wants:
            cs.wants = {}
        if ts.who_wants is None and ts.n_waiters == 0:
            self._release_queue.append(ts)
        return True

    # ------------------------------------------------------------------
    # Output

    def _free_task_on(self, ws: WorkerState, ts: TaskState) -> None:
        ts.freed_batch = self.batch
        self._free_on(ws, ts.key)

    def _free_on(self, ws: WorkerState, key: str) -> None:
        keys = self._pending_free.get(ws)
        if keys is None:
            self._pending_free[ws] = [key]
        else:
            keys.append(key)

    def _flush_free(self, ws: WorkerState) -> None:
        # A worker must see "free k" before a later "compute k" of the same batch.
        keys = self._pending_free.pop(ws, None)
        if keys is not None:
            self._out.append(FreeKeys(ws.address, keys))
            self._frees_in_out += 1

    def _cancel_free(self, ws: WorkerState, key: str) -> None:
        """Withdraw a "free ``key``" for ``ws`` not yet sent in this batch.

        Used when data for ``key`` reaches ``ws`` from outside the scheduler
        (a scatter, a fetched replica) in the same batch as an earlier release:
        the worker would otherwise drop the new copy.
        """
        pending = self._pending_free.get(ws)
        if pending is not None and key in pending:
            pending.remove(key)
        if self._frees_in_out == 0:
            return
        for instruction in self._out:
            if isinstance(instruction, FreeKeys) and instruction.worker == ws.address and key in instruction.keys:
                instruction.keys.remove(key)

    def _drop_instructions_to(self, address: str) -> None:
        """Withdraw everything not yet sent to ``address`` (its process is gone).

        A new process may register at the same address in the same batch; it
        must not receive what was meant for the old one.
        """
        self._pending_free = {ws: keys for ws, keys in self._pending_free.items() if ws.address != address}
        out = self._out
        kept = [i for i in out if not (isinstance(i, WorkerInstruction) and i.worker == address)]
        if len(kept) != len(out):
            out.clear()
            out.extend(kept)

    def _report_done(self, ts: TaskState) -> None:
        wants = ts.who_wants
        if wants is None:
            return
        for cs in wants:
            self._report_done_to(cs, ts.key)

    def _report_done_to(self, cs: ClientState, key: str) -> None:
        keys = self._pending_done.get(cs)
        if keys is None:
            self._pending_done[cs] = [key]
        else:
            keys.append(key)

    def _flush_done(self, cs: ClientState) -> None:
        keys = self._pending_done.pop(cs, None)
        if keys is not None:
            self._out.append(ClientKeysInMemory(cs.client_id, keys))

    def _flush_all(self) -> None:
        out = self._out
        if self._pending_free:
            for ws, keys in self._pending_free.items():
                out.append(FreeKeys(ws.address, keys))
            self._pending_free.clear()
        if self._pending_done:
            for cs, done in self._pending_done.items():
                out.append(ClientKeysInMemory(cs.client_id, done))
            self._pending_done.clear()

    # ------------------------------------------------------------------
    # The one place a task's state changes

    def _set_state(self, ts: TaskState, new: int) -> None:
        old = ts.state
        if old == new:
            return
        ts.state = new
        ts.group.counts.move(old, new)
        self.counts.move(old, new)
        if old == MEMORY or new == MEMORY:
            if ts.nbytes > 0:
                ts.group.nbytes_total += ts.nbytes if new == MEMORY else -ts.nbytes
            dependents = ts.dependents
            if dependents is not None:
                delta = 1 if old == MEMORY else -1
                for dependent in dependents:
                    dependent.n_waiting += delta
        was_needing = needs_dependencies(old)
        if was_needing != needs_dependencies(new):
            if was_needing:
                for dep in ts.dependencies:
                    dep.n_waiters -= 1
                    if dep.n_waiters == 0 and dep.who_wants is None:
                        self._release_queue.append(dep)
            else:
                for dep in ts.dependencies:
                    dep.n_waiters += 1

    # ------------------------------------------------------------------
    # Getting tasks computed

    def _compute(self, root: TaskState) -> None:
        """Make a released task, and whatever released dependencies it has, compute."""
        if not root.dependencies and root.run_spec is not None:
            if root.state == RELEASED:
                self._set_state(root, WAITING)
                self._ready(root)
            return
        stack = [root]
        ready: list[TaskState] = []
        while stack:
            ts = stack.pop()
            if ts.state != RELEASED:
                continue
            if ts.run_spec is None:
                self._data_lost_for_good(ts)
                continue
            blame = self._erred_dependency(ts)
            if blame is not None:
                self._err(ts, blame, blame.exception, blame.traceback)
                continue
            self._set_state(ts, WAITING)
            if ts.n_waiting == 0:
                ready.append(ts)
            else:
                for dep in ts.dependencies:
                    if dep.state == RELEASED:
                        stack.append(dep)
        if len(ready) > 1:
            ready.sort(key=priority_of)
        for ts in ready:
            if ts.state == WAITING and ts.n_waiting == 0:
                self._ready(ts)

    def _erred_dependency(self, ts: TaskState) -> TaskState | None:
        for dep in ts.dependencies:
            if dep.state == ERRED:
                blame = dep.exception_blame
                return blame if blame is not None else dep
        return None

    def _ready(self, ts: TaskState) -> None:
        """Place a task whose dependencies are all in memory."""
        if self._is_rootish(ts):
            self.queue.push(ts)
            self._set_state(ts, QUEUED)
            self._queue_dirty = True
            return
        ws = self._decide_worker(ts)
        if ws is None:
            self.unrunnable[ts] = None
            self._set_state(ts, NO_WORKER)
        else:
            self._send_to_worker(ts, ws)

    def _is_rootish(self, ts: TaskState) -> bool:
        if ts.worker_restrictions is not None or ts.resource_restrictions is not None:
            return False
        tg = ts.group
        if tg.n_tasks <= ROOTISH_FACTOR * self.total_nthreads:
            return False
        if not tg.dependencies:
            return True
        if len(tg.dependencies) > ROOTISH_MAX_DEPENDENCIES:
            return False
        total = 0
        for dep_group in tg.dependencies:
            total += dep_group.n_tasks
        return total <= ROOTISH_MAX_DEPENDENCIES

    def _valid_workers(self, ts: TaskState) -> list[WorkerState] | None:
        """Workers allowed to run ``ts``, or None when any worker may."""
        if ts.worker_restrictions is None and ts.resource_restrictions is None:
            return None
        valid: list[WorkerState] = []
        names = ts.worker_restrictions
        if names is not None:
            for name in names:
                ws = self.workers.get(name)
                if ws is None:
                    ws = self.aliases.get(name)
                if ws is not None and ws not in valid:
                    valid.append(ws)
        else:
            valid = list(self.worker_list)
        needed = ts.resource_restrictions
        if needed is not None:
            valid = [ws for ws in valid if ws.has_resources(needed)]
        if self.n_paused:
            valid = [ws for ws in valid if not ws.paused]
        if not valid and ts.loose_restrictions:
            return None
        return valid

    def _decide_worker(self, ts: TaskState) -> WorkerState | None:
        if not self.worker_list:
            return None
        valid = self._valid_workers(ts)
        if valid is not None:
            if not valid:
                return None
            holders = [ws for ws in dependency_holders(ts, MAX_CANDIDATES) if ws in valid]
            return best_worker(ts, holders if holders else valid, self.bandwidth)
        holders = dependency_holders(ts, MAX_CANDIDATES)
        if holders:
            return best_worker(ts, holders, self.bandwidth)
        sample = self._sample_workers()
        if not sample:
            return None  # every worker is paused: the task waits in no-worker
        return best_worker(ts, sample, self.bandwidth)

    def _sample_workers(self) -> list[WorkerState]:
        """Up to ``SAMPLE_WORKERS`` running (not paused) workers; empty if all are paused."""
        sample = self._sample_window()
        if self.n_paused == 0:
            return sample
        running = [ws for ws in sample if not ws.paused]
        if running or self.n_paused >= len(self.worker_list):
            return running
        # The whole window is paused: only then is the list scanned.
        for ws in self.worker_list:
            if not ws.paused:
                running.append(ws)
                if len(running) >= SAMPLE_WORKERS:
                    break
        return running

    def _sample_window(self) -> list[WorkerState]:
        """A rotating window of workers, so that placing a task is O(1) in cluster size."""
        workers = self.worker_list
        n = len(workers)
        if n <= SAMPLE_WORKERS:
            return workers
        start = self._round_robin % n
        self._round_robin = start + SAMPLE_WORKERS
        sample = workers[start : start + SAMPLE_WORKERS]
        if len(sample) < SAMPLE_WORKERS:
            sample = sample + workers[: SAMPLE_WORKERS - len(sample)]
        return sample

    def _send_to_worker(self, ts: TaskState, ws: WorkerState) -> None:
        duration = ts.group.prefix.duration_average
        if duration < 0.0:
            duration = UNKNOWN_DURATION
        ts.expected_duration = duration
        self._run_counter += 1
        ts.run_id = self._run_counter
        ts.processing_on = ws
        ws.processing[ts] = None
        ws.occupancy += duration
        self._set_state(ts, PROCESSING)
        deps = ts.dependencies
        who_has = EMPTY_WHO_HAS
        nbytes = EMPTY_NBYTES
        if deps:
            who_has = {}
            nbytes = {}
            for dep in deps:
                holders = dep.who_has
                who_has[dep.key] = [w.address for w in holders] if holders is not None else []
                nbytes[dep.key] = dep.nbytes
        if self._pending_free and ws in self._pending_free:
            self._flush_free(ws)
        self._out.append(
            ComputeTask(
                ws.address, ts.key, ts.run_spec, ts.priority, who_has, nbytes, ts.resource_restrictions, ts.run_id
            )
        )

    def _fill(self, ws: WorkerState) -> None:
        """Give ``ws`` queued root tasks, highest priority first, up to its capacity."""
        if ws.paused:
            return
        queue = self.queue
        processing = ws.processing
        capacity = ws.capacity
        while len(processing) < capacity:
            ts = queue.pop()
            if ts is None:
                break
            self._send_to_worker(ts, ws)

    def _fill_all(self) -> None:
        self._queue_dirty = False
        for ws in self.worker_list:
            if not self.queue:
                break
            self._fill(ws)

    def _unassign(self, ts: TaskState) -> None:
        """Take a waiting-to-run task out of the queue, the no-worker set or its worker."""
        state = ts.state
        if state == QUEUED:
            self.queue.remove(ts)
        elif state == NO_WORKER:
            del self.unrunnable[ts]
        elif state == PROCESSING:
            ws = ts.processing_on
            if ws is not None:
                self._stop_processing(ts, ws)
                self._free_task_on(ws, ts)
                if self.queue:
                    self._queue_dirty = True

    def _stop_processing(self, ts: TaskState, ws: WorkerState) -> None:
        del ws.processing[ts]
        if ws.processing:
            ws.occupancy -= ts.expected_duration
        else:
            ws.occupancy = 0.0
        ts.processing_on = None
        ts.steal_target = None

    # ------------------------------------------------------------------
    # Results

    def _add_replica(self, ts: TaskState, ws: WorkerState) -> None:
        ts.held_batch = self.batch
        holders = ts.who_has
        if holders is None:
            ts.who_has = [ws]
        elif ws in holders:
            return
        else:
            holders.append(ws)
        ws.has_what[ts] = None
        if ts.nbytes > 0:
            ws.nbytes += ts.nbytes

    def _remove_replica(self, ts: TaskState, ws: WorkerState) -> bool:
        """Forget that ``ws`` holds ``ts``; return True if that was the last replica.

        Callers use the return value rather than re-testing ``ts.who_has``:
        mypy keeps an earlier ``ts.who_has is not None`` narrowing across this
        call, and compiled code would trust it.
        """
        holders = ts.who_has
        if holders is None or ws not in holders:
            return False
        holders.remove(ws)
        del ws.has_what[ts]
        if ts.nbytes > 0:
            ws.nbytes -= ts.nbytes
        if holders:
            return False
        ts.who_has = None
        return True

    def _to_memory(self, ts: TaskState, ws: WorkerState, nbytes: int) -> None:
        """A task's result now exists on ``ws``."""
        if ts.state != MEMORY and ts.state != RELEASED:
            self._unassign(ts)
        ts.nbytes = nbytes
        self._add_replica(ts, ws)
        self._set_state(ts, MEMORY)
        self._report_done(ts)
        dependents = ts.dependents
        if dependents is not None:
            ready: list[TaskState] = []
            for dependent in dependents:
                if dependent.state == WAITING and dependent.n_waiting == 0:
                    ready.append(dependent)
            if len(ready) > 1:
                ready.sort(key=priority_of)
            for dependent in ready:
                self._ready(dependent)
        if ts.who_wants is None and ts.n_waiters == 0:
            self._release_queue.append(ts)

    # ------------------------------------------------------------------
    # Failure

    def _err(self, root: TaskState, blame: TaskState, exception: object, traceback: object) -> None:
        """Mark ``root`` and every dependent that was going to run erred."""
        stack = [root]
        while stack:
            ts = stack.pop()
            if ts.state == ERRED or ts.state == FORGOTTEN or ts.state == MEMORY:
                continue
            self._unassign(ts)
            ts.exception = exception
            ts.traceback = traceback
            ts.exception_blame = blame
            self._set_state(ts, ERRED)
            self.n_tasks_erred += 1
            wants = ts.who_wants
            if wants is not None:
                for cs in wants:
                    self._flush_done(cs)
                    self._out.append(ClientKeyErred(cs.client_id, ts.key, blame.key, exception, traceback))
            dependents = ts.dependents
            if dependents is not None:
                for dependent in dependents:
                    if needs_dependencies(dependent.state):
                        stack.append(dependent)
            if ts.who_wants is None and ts.n_waiters == 0:
                self._release_queue.append(ts)

    def _data_lost_for_good(self, ts: TaskState) -> None:
        """Scattered data (no recipe to recompute it) is gone from every worker."""
        wants = ts.who_wants
        if wants is not None:
            for cs in wants:
                self._flush_done(cs)
                self._out.append(ClientKeyLost(cs.client_id, ts.key))
        error = SchedulerError("lost-data", f"the data of {ts.key!r} was scattered and every worker holding it is gone")
        self._err(ts, ts, error, None)

    def _lose_data(self, lost: list[TaskState]) -> None:
        """These tasks lost their last replica: dependents wait again, and needed data is recomputed."""
        for ts in lost:
            if ts.state == MEMORY:
                self._set_state(ts, RELEASED)
        for ts in lost:
            dependents = ts.dependents
            if dependents is None:
                continue
            for dependent in dependents:
                state = dependent.state
                if state == PROCESSING or state == QUEUED or state == NO_WORKER:
                    self._unassign(dependent)
                    self._set_state(dependent, WAITING)
        if len(lost) > 1:
            lost.sort(key=priority_of)
        for ts in lost:
            if ts.state == RELEASED and (ts.who_wants is not None or ts.n_waiters > 0):
                self.n_recomputed += 1
                self._compute(ts)
            else:
                self._release_queue.append(ts)

    # ------------------------------------------------------------------
    # Releasing and forgetting

    def _drain(self) -> None:
        queue = self._release_queue
        while queue:
            ts = queue.pop()
            state = ts.state
            if state == FORGOTTEN or ts.who_wants is not None or ts.n_waiters > 0:
                continue
            if state != RELEASED and state != ERRED:
                self._release(ts)
            if ts.n_dependents == 0:
                self._forget(ts)
        if self._queue_dirty:
            self._fill_all()

    def _release(self, ts: TaskState) -> None:
        if ts.state == MEMORY:
            holders = ts.who_has
            if holders is not None:
                for ws in holders:
                    self._free_task_on(ws, ts)
                    del ws.has_what[ts]
                    if not ws.has_what:
                        ws.has_what = {}
                    if ts.nbytes > 0:
                        ws.nbytes -= ts.nbytes
                ts.who_has = None
        else:
            self._unassign(ts)
        self._set_state(ts, RELEASED)

    def _forget(self, ts: TaskState) -> None:
        del self.tasks[ts.key]
        if not self.tasks:
            self.tasks = {}  # a dict emptied by deletion keeps its size
        self._set_state(ts, FORGOTTEN)
        tg = ts.group
        tg.n_tasks -= 1
        if tg.n_tasks == 0:
            if self.groups.get(tg.name) is tg:
                del self.groups[tg.name]
            tg.dependencies.clear()  # may hold tg itself
        for dep in ts.dependencies:
            dep.n_dependents -= 1
            if dep.n_dependents == 0:
                dep.dependents = None
                if dep.who_wants is None and dep.n_waiters == 0:
                    self._release_queue.append(dep)
            else:
                _prune_dependents(dep)
        # Drop every reference a forgotten task holds, so that no reference
        # cycle outlives it and reference counting alone frees the records.
        ts.dependencies = NO_DEPENDENCIES
        ts.exception_blame = None
        ts.exception = None
        ts.traceback = None


def priority_of(ts: TaskState) -> int:
    """Sort key: most urgent first."""
    return ts.priority


def _prune_dependents(ts: TaskState) -> None:
    dependents = ts.dependents
    if dependents is not None and len(dependents) > 2 * ts.n_dependents + 8:
        ts.dependents = [d for d in dependents if d.state != FORGOTTEN]
