"""The scheduler core's entry point: events in, instructions out.

``SchedulerState.handle_events`` is the only way state changes.  It is
synchronous and deterministic: the same events in the same order give the same
instructions, which is what makes recording and replaying a scheduler possible.
"""

from __future__ import annotations

from typing import Final

from sched_core._events import (
    CancelKeys,
    ClientAdded,
    ClientReleasesKeys,
    ClientRemoved,
    ClientWantsKeys,
    GraphSubmitted,
    KeysScattered,
    MissingData,
    ReplicasAdded,
    RetireWorker,
    SchedulerEvent,
    StealResponse,
    TaskErred,
    TaskFinished,
    Tick,
    WorkerAdded,
    WorkerHeartbeat,
    WorkerRemoved,
    WorkerStatusChanged,
)
from sched_core._graph import GraphError, graph_order, parse_submission
from sched_core._instructions import (
    ClientError,
    ClientKeyErred,
    ClientKeysCancelled,
    Instruction,
    SchedulerError,
    StealRequest,
)
from sched_core._model import EMA_WEIGHT, ClientState, TaskState, WorkerState
from sched_core._placement import placement_cost, queue_capacity, transfer_bytes
from sched_core._states import ERRED, MEMORY, NO_WORKER, PROCESSING, RELEASED
from sched_core._retire import RetiringEngine
from sched_core._transitions import priority_of

DEFAULT_ALLOWED_FAILURES: Final = 3
DEFAULT_MAX_QUEUE_DEPTH: Final = 64
DEFAULT_BANDWIDTH: Final = 100e6
# User priorities dominate, then submission order, then the graph's own order.
GENERATION_SHIFT: Final = 32
USER_PRIORITY_SHIFT: Final = 62
# The worker-side states in which a worker gives a task up when asked to
# (``WorkerMachine`` releases a task only if it has not started running).
STEALABLE_STATES: Final[tuple[str, ...]] = ("waiting", "ready")
# Per balancing round, the most tasks inspected on one busy worker.
STEAL_SCAN_LIMIT: Final = 64
# A task is moved only if fetching its inputs costs less than this share of its run time.
STEAL_COST_RATIO: Final = 0.5


class SchedulerState(RetiringEngine):
    """All the scheduler's state; feed it events, carry out the instructions it returns."""

    def __init__(
        self,
        allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
        max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH,
        bandwidth: float = DEFAULT_BANDWIDTH,
    ) -> None:
        super().__init__(allowed_failures, max_queue_depth, bandwidth)

    def handle_events(self, events: list[SchedulerEvent]) -> list[Instruction]:
        """Apply a batch of events; return the instructions they lead to, in order."""
        out: list[Instruction] = []
        self._out = out
        self._frees_in_out = 0
        self.batch += 1
        for event in events:
            if isinstance(event, TaskFinished):
                self._on_task_finished(event)
            elif isinstance(event, ClientReleasesKeys):
                self._on_client_releases(event)
            elif isinstance(event, GraphSubmitted):
                self._on_graph_submitted(event)
            elif isinstance(event, TaskErred):
                self._on_task_erred(event)
            elif isinstance(event, WorkerHeartbeat):
                self._on_heartbeat(event)
            elif isinstance(event, Tick):
                self._balance()
            elif isinstance(event, StealResponse):
                self._on_steal_response(event)
            elif isinstance(event, ReplicasAdded):
                self._on_replicas_added(event)
            elif isinstance(event, MissingData):
                self._on_missing_data(event)
            elif isinstance(event, WorkerAdded):
                self._on_worker_added(event)
            elif isinstance(event, WorkerRemoved):
                self._on_worker_removed(event)
            elif isinstance(event, WorkerStatusChanged):
                self._on_worker_status(event)
            elif isinstance(event, ClientWantsKeys):
                self._on_client_wants(event)
            elif isinstance(event, CancelKeys):
                self._on_cancel(event)
            elif isinstance(event, KeysScattered):
                self._on_scattered(event)
            elif isinstance(event, ClientAdded):
                self._client(event.client)
            elif isinstance(event, ClientRemoved):
                self._on_client_removed(event)
            elif isinstance(event, RetireWorker):
                self._on_retire_worker(event)
            else:
                raise TypeError(f"not a scheduler event: {event!r}")
            self._drain()
        if self.retiring:
            self._check_retirements()
        self._flush_all()
        self._out = []
        return out

    # ------------------------------------------------------------------
    # Clients

    def _on_graph_submitted(self, event: GraphSubmitted) -> None:
        cs = self._client(event.client)
        parsed = parse_submission(event.tasks, event.wanted, self.tasks, self._unregistered)
        if isinstance(parsed, GraphError):
            self._out.append(ClientError(cs.client_id, parsed.kind, parsed.message, parsed.keys))
            return

        self.generation += 1
        base = self.generation << GENERATION_SHIFT
        unregistered = self._unregistered
        new_tasks = parsed.tasks
        specs = parsed.specs
        for i in range(len(new_tasks)):
            ts = new_tasks[i]
            spec = specs[i]
            if ts.group is unregistered:
                ts.group = self._group_for(ts.key)
            for dep in ts.dependencies:
                # A dependency later in the submission gets its group now, so
                # that the group graph can be recorded.
                if dep.group is unregistered:
                    dep.group = self._group_for(dep.key)
            priority = base + graph_order(ts)
            if spec.priority != 0:
                priority -= spec.priority << USER_PRIORITY_SHIFT
            ts.priority = priority
            ts.retries = spec.retries
            if spec.workers is not None and spec.workers:
                ts.worker_restrictions = spec.workers
            if spec.resources is not None and spec.resources:
                ts.resource_restrictions = spec.resources
            ts.loose_restrictions = spec.allow_other_workers
            self._register(ts)

        for ts in parsed.wanted:
            if ts.who_wants is None or cs not in ts.who_wants:
                self._add_want(cs, ts)
                self._start_wanted(cs, ts)
        for ts in new_tasks:
            if ts.state == RELEASED and ts.who_wants is None and ts.n_waiters == 0:
                self._release_queue.append(ts)

    def _start_wanted(self, cs: ClientState, ts: TaskState) -> None:
        """A client newly holds ``ts``: compute it, or tell the client where it stands."""
        state = ts.state
        if state == RELEASED:
            self._compute(ts)
        elif state == MEMORY:
            self._report_done_to(cs, ts.key)
        elif state == ERRED:
            blame = ts.exception_blame
            self._flush_done(cs)
            self._out.append(
                ClientKeyErred(
                    cs.client_id, ts.key, blame.key if blame is not None else ts.key, ts.exception, ts.traceback
                )
            )

    def _on_client_wants(self, event: ClientWantsKeys) -> None:
        cs = self._client(event.client)
        unknown = [key for key in event.keys if key not in self.tasks]
        if unknown:
            self._out.append(
                ClientError(
                    cs.client_id, "unknown-key", f"the scheduler does not know these keys: {unknown[:20]!r}", unknown
                )
            )
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is not None and (ts.who_wants is None or cs not in ts.who_wants):
                self._add_want(cs, ts)
                self._start_wanted(cs, ts)

    def _on_client_releases(self, event: ClientReleasesKeys) -> None:
        cs = self.clients.get(event.client)
        if cs is None:
            return
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is not None:
                self._remove_want(cs, ts)

    def _on_cancel(self, event: CancelKeys) -> None:
        cs = self._client(event.client)
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.who_wants is None:
                continue
            holders = list(ts.who_wants) if event.force else [cs]
            for holder in holders:
                if self._remove_want(holder, ts) and holder is not cs:
                    self._flush_done(holder)
                    self._out.append(ClientKeysCancelled(holder.client_id, [key]))
        self._flush_done(cs)
        self._out.append(ClientKeysCancelled(cs.client_id, list(event.keys)))

    def _on_client_removed(self, event: ClientRemoved) -> None:
        cs = self.clients.pop(event.client, None)
        if cs is None:
            return
        for ts in list(cs.wants):
            self._remove_want(cs, ts)
        self._pending_done.pop(cs, None)

    def _on_scattered(self, event: KeysScattered) -> None:
        cs = self._client(event.client)
        holders: list[WorkerState] = []
        for address in event.workers:
            ws = self.workers.get(address)
            if ws is not None:
                holders.append(ws)
        for key, nbytes in event.nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = TaskState(key, None, self._unregistered, 0)
                ts.group = self._group_for(key)
                self.tasks[key] = ts
                self._register(ts)
            newly_wanted = self._add_want(cs, ts)
            for ws in holders:
                self._cancel_free(ws, key)
            if ts.state == MEMORY:
                for ws in holders:
                    self._add_replica(ts, ws)
                if newly_wanted:
                    self._report_done_to(cs, ts.key)
            elif not holders:
                # Every worker the data was sent to has gone since.
                if ts.run_spec is None:
                    self._data_lost_for_good(ts)
                else:
                    self._start_wanted(cs, ts)
            else:
                if ts.state == ERRED:
                    ts.exception = ts.traceback = ts.exception_blame = None
                    self._set_state(ts, RELEASED)
                self._to_memory(ts, holders[0], nbytes)
                for ws in holders[1:]:
                    self._add_replica(ts, ws)

    # ------------------------------------------------------------------
    # Workers

    def _on_worker_added(self, event: WorkerAdded) -> None:
        if event.address in self.workers:
            # The same address again means the old process is gone.
            self._remove_worker(self.workers[event.address], False)
        if event.nthreads < 1:
            return
        ws = WorkerState(event.address, event.name, event.nthreads, event.memory_limit, dict(event.resources))
        ws.capacity = queue_capacity(ws, self.max_queue_depth)
        ws.index = len(self.worker_list)
        self.workers[ws.address] = ws
        self.worker_list.append(ws)
        if ws.name != ws.address:
            self.aliases[ws.name] = ws
        self.total_nthreads += ws.nthreads
        self._retry_unrunnable()
        self._fill(ws)

    def _retry_unrunnable(self) -> None:
        """Place the no-worker tasks that a new or resumed worker may now run."""
        if not self.unrunnable:
            return
        waiting = sorted(self.unrunnable, key=priority_of)
        for ts in waiting:
            if ts.state == NO_WORKER:
                chosen = self._decide_worker(ts)
                if chosen is not None:
                    del self.unrunnable[ts]
                    self._send_to_worker(ts, chosen)

    def _on_worker_status(self, event: WorkerStatusChanged) -> None:
        """Pause (no new tasks; what it holds stays placeable for stealing) or resume."""
        ws = self.workers.get(event.address)
        if ws is None:
            self.n_stale_messages += 1
            return
        if ws.paused == event.paused or ws.retiring:
            return  # a retiring worker stays paused
        ws.paused = event.paused
        if event.paused:
            self.n_paused += 1
            return
        self.n_paused -= 1
        self._retry_unrunnable()
        self._fill(ws)

    def _on_worker_removed(self, event: WorkerRemoved) -> None:
        ws = self.workers.get(event.address)
        if ws is not None:
            self._remove_worker(ws, event.expected)

    def _remove_worker(self, ws: WorkerState, expected: bool) -> None:
        del self.workers[ws.address]
        if self.aliases.get(ws.name) is ws:
            del self.aliases[ws.name]
        last = self.worker_list.pop()
        if last is not ws:
            self.worker_list[ws.index] = last
            last.index = ws.index
        ws.alive = False
        if ws.paused:
            self.n_paused -= 1
        self.total_nthreads -= ws.nthreads
        self._drop_instructions_to(ws.address)

        rerun: list[TaskState] = []
        for ts in list(ws.processing):
            self._stop_processing(ts, ws)
            if not expected:
                ts.suspicious += 1
            if ts.suspicious > self.allowed_failures:
                error = SchedulerError(
                    "killed-worker",
                    f"task {ts.key!r} was running on {ts.suspicious} workers that died "
                    f"(allowed: {self.allowed_failures}); the last was {ws.address}",
                )
                self._err(ts, ts, error, None)
            else:
                self._set_state(ts, RELEASED)
                rerun.append(ts)
        lost: list[TaskState] = []
        for ts in list(ws.has_what):
            if self._remove_replica(ts, ws):
                lost.append(ts)
        ws.nbytes = 0
        if lost:
            self._lose_data(lost)
        rerun.sort(key=priority_of)
        for ts in rerun:
            if ts.state == RELEASED:
                if ts.who_wants is not None or ts.n_waiters > 0:
                    self._compute(ts)
                else:
                    self._release_queue.append(ts)
        if self.queue:
            self._queue_dirty = True

    def _on_heartbeat(self, event: WorkerHeartbeat) -> None:
        ws = self.workers.get(event.address)
        if ws is None:
            self.n_stale_messages += 1
            return
        if event.latency > 0.0:
            ws.latency += EMA_WEIGHT * (event.latency - ws.latency)
        ws.memory = event.memory
        ws.capacity = queue_capacity(ws, self.max_queue_depth)
        self._fill(ws)

    def _on_task_finished(self, event: TaskFinished) -> None:
        ws = self.workers.get(event.worker)
        if ws is None:
            self.n_stale_messages += 1
            return
        ts = self.tasks.get(event.key)
        if ts is None:
            # Nobody wants it any more; it is assigned nowhere, so freeing is safe.
            self.n_stale_messages += 1
            self._free_on(ws, event.key)
            return
        if not self._is_current_run(ts, ws, event.run_id):
            # It crossed a "free" or a reassignment on the wire.  Unless the
            # key is (again) assigned to or held by this worker, make sure the
            # worker drops the result; a "free" is harmless if it already has.
            self.n_stale_messages += 1
            if ts.processing_on is not ws and (ts.who_has is None or ws not in ts.who_has):
                self._free_task_on(ws, ts)
            return
        self._stop_processing(ts, ws)
        self._learn_duration(ts, ws, event.duration, event.nbytes)
        self.n_tasks_finished += 1
        self._to_memory(ts, ws, event.nbytes)
        self._fill(ws)

    def _is_current_run(self, ts: TaskState, ws: WorkerState, run_id: int) -> bool:
        if ts.state != PROCESSING or ts.processing_on is not ws:
            return False
        return run_id < 0 or run_id == ts.run_id

    def _learn_duration(self, ts: TaskState, ws: WorkerState, duration: float, nbytes: int) -> None:
        if duration <= 0.0:
            # Not a measured run: a worker that already held the data (a
            # fetched copy) reports it at once.  Nothing to learn from it.
            return
        ts.group.prefix.add_duration(duration)
        if ws.duration_average < 0.0:
            ws.duration_average = duration
            ws.nbytes_average = float(nbytes)
        else:
            ws.duration_average += EMA_WEIGHT * (duration - ws.duration_average)
            ws.nbytes_average += EMA_WEIGHT * (nbytes - ws.nbytes_average)
        ws.n_finished += 1
        if ws.n_finished < 16 or ws.n_finished % 16 == 0:
            ws.capacity = queue_capacity(ws, self.max_queue_depth)

    def _on_task_erred(self, event: TaskErred) -> None:
        ws = self.workers.get(event.worker)
        ts = self.tasks.get(event.key)
        if ws is None or ts is None or not self._is_current_run(ts, ws, event.run_id):
            self.n_stale_messages += 1
            return
        self._stop_processing(ts, ws)
        if ts.retries > 0:
            ts.retries -= 1
            self._set_state(ts, RELEASED)
            self._compute(ts)
        else:
            self._err(ts, ts, event.exception, event.traceback)
        self._fill(ws)

    def _on_replicas_added(self, event: ReplicasAdded) -> None:
        """A worker holds copies of these keys (fetched as dependencies).

        A valid copy is as good as a computed result: a key the scheduler was
        about to (re)compute goes to memory on that worker instead.
        """
        ws = self.workers.get(event.worker)
        if ws is None:
            self.n_stale_messages += 1
            return
        sizes = event.nbytes
        seen = event.seen_batch
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state == ERRED:
                self._free_on(ws, key)
                continue
            if 0 <= seen < ts.freed_batch:
                # Sent before the worker saw a "free" of this key (or before
                # this key was last created): the copy may be gone already.
                self.n_stale_messages += 1
                if ts.processing_on is not ws and (ts.who_has is None or ws not in ts.who_has):
                    self._free_task_on(ws, ts)
                continue
            self._cancel_free(ws, key)
            if ts.state == MEMORY:
                self._add_replica(ts, ws)
                continue
            runner = ts.processing_on
            if runner is not None:
                self._stop_processing(ts, runner)
                if runner is not ws:
                    self._free_task_on(runner, ts)
                    self._fill(runner)
            nbytes = sizes.get(key, ts.nbytes) if sizes is not None else ts.nbytes
            self._to_memory(ts, ws, max(nbytes, 0))

    def _on_missing_data(self, event: MissingData) -> None:
        ts = self.tasks.get(event.key)
        errant = self.workers.get(event.errant_worker)
        if ts is None or errant is None or ts.who_has is None or errant not in ts.who_has:
            # Nothing to correct.  The asking worker still waits for the key,
            # so give its dependents fresh locations.
            if ts is not None:
                self._reassign_dependents_on(ts, event.worker)
            return
        if 0 <= event.seen_batch < ts.held_batch:
            # The key gained a copy since the worker learned where it lives;
            # the failure may concern an older copy.  Retry with fresh locations.
            self.n_stale_messages += 1
            self._reassign_dependents_on(ts, event.worker)
            return
        if self._remove_replica(ts, errant):
            self._lose_data([ts])
        else:
            self._reassign_dependents_on(ts, event.worker)

    def _reassign_dependents_on(self, ts: TaskState, address: str) -> None:
        ws = self.workers.get(address)
        dependents = ts.dependents
        if ws is None or dependents is None or ts.state != MEMORY:
            return
        for dependent in list(dependents):
            if dependent.state == PROCESSING and dependent.processing_on is ws:
                self._stop_processing(dependent, ws)
                self._free_task_on(ws, dependent)
                self._ready(dependent)
        self._fill(ws)

    # ------------------------------------------------------------------
    # Work stealing

    def _balance(self) -> None:
        """Move not-yet-started tasks from overloaded workers to idle ones."""
        if len(self.worker_list) < 2:
            return
        idle = [ws for ws in self.worker_list if len(ws.processing) < ws.nthreads and not ws.paused]
        if not idle:
            return
        # A paused worker starts nothing, so all it was given is offered; it
        # refuses (by state) the tasks it is already running.
        busy = [ws for ws in self.worker_list if len(ws.processing) > (0 if ws.paused else ws.nthreads)]
        if not busy:
            return
        busy.sort(key=_load_of, reverse=True)
        free_slots = {ws: ws.nthreads - len(ws.processing) for ws in idle}
        for victim in busy:
            spare = len(victim.processing) - (0 if victim.paused else victim.nthreads)
            scanned = 0
            for ts in reversed(victim.processing):
                if spare <= 0 or scanned >= STEAL_SCAN_LIMIT or not free_slots:
                    break
                scanned += 1
                if ts.steal_target is not None or ts.worker_restrictions is not None:
                    continue
                if ts.resource_restrictions is not None:
                    continue
                thief = self._pick_thief(ts, free_slots, victim.paused)
                if thief is None:
                    continue
                ts.steal_target = thief
                self.n_steal_requests += 1
                spare -= 1
                left = free_slots[thief] - 1
                if left <= 0:
                    del free_slots[thief]
                else:
                    free_slots[thief] = left
                if self._pending_free and victim in self._pending_free:
                    self._flush_free(victim)
                self._out.append(StealRequest(victim.address, ts.key, ts.run_id))

    def _pick_thief(self, ts: TaskState, free_slots: dict[WorkerState, int], forced: bool) -> WorkerState | None:
        """The idle worker to move ``ts`` to; unless ``forced`` (its worker is paused), only if moving is cheap."""
        best: WorkerState | None = None
        best_cost = 0.0
        for ws in free_slots:
            cost = placement_cost(ts, ws, self.bandwidth)
            if best is None or cost < best_cost:
                best = ws
                best_cost = cost
        if best is None or forced:
            return best
        moving_cost = transfer_bytes(ts, best) / self.bandwidth
        if moving_cost > STEAL_COST_RATIO * max(ts.expected_duration, 0.001):
            return None
        return best

    def _on_steal_response(self, event: StealResponse) -> None:
        ts = self.tasks.get(event.key)
        ws = self.workers.get(event.worker)
        if ts is None or ws is None or not self._is_current_run(ts, ws, event.run_id):
            return
        thief = ts.steal_target
        ts.steal_target = None
        if thief is None:
            return
        if event.state is not None and event.state not in STEALABLE_STATES:
            return  # already running or done there; the result will come
        self._stop_processing(ts, ws)
        self.n_steals += 1
        if thief.alive and not thief.paused and ts.n_waiting == 0:
            self._send_to_worker(ts, thief)
        else:
            self._set_state(ts, RELEASED)
            self._compute(ts)
        self._fill(ws)

    # ------------------------------------------------------------------
    # Reading the state

    def task_state(self, key: str) -> str | None:
        """The state name of ``key``, or None if the scheduler does not know it."""
        ts = self.tasks.get(key)
        return ts.state_name if ts is not None else None

    def n_queued(self) -> int:
        return len(self.queue)



def _load_of(ws: WorkerState) -> float:
    return ws.occupancy / ws.nthreads
