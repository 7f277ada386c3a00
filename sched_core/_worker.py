"""The worker-side task state machine (sans-I/O): :class:`WorkerMachine`.

One entry point mutates state: :meth:`WorkerMachine.handle_events` takes a
batch of events (``_worker_events``) and returns a batch of instructions.

The machine is split over three modules, each importing only the ones before:

* ``_worker_task``: the task states, :class:`WorkerTask` and
  :class:`Transfer` (the states and the lifetime rule are described there);
* ``_worker_queues``: :class:`WorkerQueues`, the machine's attributes and the
  bookkeeping its handlers are built from (ready and fetch queues, holders,
  memory, forgetting tasks, starting transfers);
* this module: :class:`WorkerMachine`, a subclass of ``WorkerQueues`` with the
  public API, the event handlers and :meth:`WorkerMachine.validate`.
"""

from __future__ import annotations

from sched_core._worker_events import (
    AddReplicaMsg,
    ComputeTaskEvent,
    DataPutEvent,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepMissingEvent,
    GatherDepSuccessEvent,
    MissingDep,
    PauseEvent,
    ReleaseData,
    RemoveReplicasEvent,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    StealRequestEvent,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    UnpauseEvent,
    UpdateWhoHasEvent,
    WorkerEvent,
    WorkerMachineInstruction,
)
from sched_core._worker_queues import WorkerQueues
from sched_core._worker_task import (
    CANCELLED,
    DEFAULT_NBYTES,
    DEFAULT_TRANSFER_MESSAGE_BYTES,
    DEFAULT_TRANSFER_PEERS,
    ERROR,
    EXECUTING,
    FETCH,
    FLIGHT,
    MEMORY,
    MISSING,
    NO_PEERS,
    NO_TASKS,
    READY,
    RELEASED,
    SEQ_BITS,
    STATE_NAMES,
    WAITING,
    Transfer,
    WorkerTask,
)

__all__ = ["STATE_NAMES", "Transfer", "WorkerMachine", "WorkerTask"]


class _Tally:
    """What :meth:`WorkerMachine.validate` adds up over the tasks, to compare
    with the machine's own counters and indexes once every task is checked."""

    ready_keys: set[int]
    constrained_keys: set[int]
    n_ready: int
    n_constrained: int
    n_fetch: int
    nbytes_memory: int
    # peer -> fetch tasks listing it; peer -> keys it holds; resource -> in use
    needed: dict[str, int]
    has_what: dict[str, dict[str, None]]
    used: dict[str, float]

    def __init__(self, ready_keys: set[int], constrained_keys: set[int]) -> None:
        self.ready_keys = ready_keys
        self.constrained_keys = constrained_keys
        self.n_ready = 0
        self.n_constrained = 0
        self.n_fetch = 0
        self.nbytes_memory = 0
        self.needed = {}
        self.has_what = {}
        self.used = {}


class WorkerMachine(WorkerQueues):
    """Task state of one worker.  Feed events, carry out the instructions.

    ``address`` is this worker's own address (ignored when it appears in a
    holder list).  ``nthreads``: tasks executing at once.  ``resources``: the
    worker's abstract resources (tasks asking for resources run only when they
    fit).  ``transfer_message_bytes``: byte budget of one GatherDep (a request
    always carries at least one key).  ``transfer_peers``: most peers fetched
    from at once.  ``keep_fetched``: keep fetched dependencies after use and
    report them with AddReplicaMsg, to be freed by the scheduler (True), or drop
    them silently as soon as nothing here needs them (False).

    Plain int attributes the runtime may read at any time: ``nbytes_in_memory``,
    ``bytes_in_flight``, ``n_executed``, ``n_failed``, ``n_transfers``,
    ``n_fetched``, ``bytes_fetched``.
    """

    def __init__(
        self,
        address: str,
        nthreads: int = 1,
        resources: dict[str, float] | None = None,
        transfer_message_bytes: int = DEFAULT_TRANSFER_MESSAGE_BYTES,
        transfer_peers: int = DEFAULT_TRANSFER_PEERS,
        keep_fetched: bool = True,
    ) -> None:
        super().__init__(
            address, nthreads, resources, transfer_message_bytes, transfer_peers, keep_fetched
        )

    @property
    def n_ready(self) -> int:
        """Ready tasks without resource requirements."""
        return len(self.ready_tasks)

    @property
    def n_constrained(self) -> int:
        """Ready tasks with resource requirements."""
        return len(self.constrained_tasks)

    def __repr__(self) -> str:
        return (
            f"<WorkerMachine {self.address!r} tasks={len(self.tasks)} "
            f"running={len(self.running)}/{self.nthreads} "
            f"ready={self.n_ready + self.n_constrained} fetch={self.n_fetch} "
            f"in_flight={len(self.in_flight)} memory={self.nbytes_in_memory}B"
            f"{' paused' if self.paused else ''}>"
        )

    # ------------------------------------------------------------------
    # Entry point
    # ------------------------------------------------------------------

    def handle_events(self, events: list[WorkerEvent]) -> list[WorkerMachineInstruction]:
        """Apply a batch of events; return the instructions to carry out.

        Events are applied in order; new Execute and GatherDep instructions are
        chosen once, at the end of the batch, so a batch of compute requests is
        started in priority order.  Deterministic: the same events give the
        same instructions (no dependence on hashing or time).
        """
        out: list[WorkerMachineInstruction] = []
        for ev in events:
            self._handle(ev, out)
        self._ensure_computing(out)
        self._ensure_communicating(out)
        return out

    def handle_event(self, ev: WorkerEvent) -> list[WorkerMachineInstruction]:
        """Convenience: ``handle_events([ev])``."""
        return self.handle_events([ev])

    def state_of(self, key: str) -> str | None:
        """State name of ``key``, or None if not tracked."""
        ts = self.tasks.get(key)
        return None if ts is None else STATE_NAMES[ts.state]

    def _handle(self, ev: WorkerEvent, out: list[WorkerMachineInstruction]) -> None:
        # Most frequent first.
        if isinstance(ev, ComputeTaskEvent):
            self._on_compute(ev, out)
        elif isinstance(ev, ExecuteSuccessEvent):
            self._on_execute_success(ev, out)
        elif isinstance(ev, FreeKeysEvent):
            self._free_keys(ev.keys, out)
        elif isinstance(ev, GatherDepSuccessEvent):
            self._on_gather_success(ev, out)
        elif isinstance(ev, ExecuteFailureEvent):
            self._on_execute_failure(ev, out)
        elif isinstance(ev, GatherDepMissingEvent):
            self._on_gather_missing(ev.peer, ev.keys, out)
        elif isinstance(ev, GatherDepFailureEvent):
            self._on_gather_failure(ev, out)
        elif isinstance(ev, GatherDepBusyEvent):
            self._on_gather_busy(ev, out)
        elif isinstance(ev, RetryBusyWorkerEvent):
            self.busy.discard(ev.peer)
        elif isinstance(ev, UpdateWhoHasEvent):
            self._on_update_who_has(ev, out)
        elif isinstance(ev, StealRequestEvent):
            self._on_steal_request(ev, out)
        elif isinstance(ev, RemoveReplicasEvent):
            self._on_remove_replicas(ev, out)
        elif isinstance(ev, DataPutEvent):
            self._on_data_put(ev, out)
        elif isinstance(ev, PauseEvent):
            self.paused = True
        elif isinstance(ev, UnpauseEvent):
            self.paused = False
        else:
            raise TypeError(f"unknown worker event {ev!r}")

    # ------------------------------------------------------------------
    # Compute requests
    # ------------------------------------------------------------------

    def _on_compute(self, ev: ComputeTaskEvent, out: list[WorkerMachineInstruction]) -> None:
        key = ev.key
        ts = self.tasks.get(key)
        if ts is None:
            ts = WorkerTask(key, ev.priority)
            self.tasks[key] = ts
        else:
            st = ts.state
            if st == WAITING or st == READY or st == EXECUTING:
                # Duplicate request; new holder info may still help.
                ts.held = True
                if st == WAITING:
                    self._link_dependencies(ts, ev, out, False)
                return
            if st == CANCELLED:
                ts.state = EXECUTING
                ts.held = True
                ts.run_spec = ev.run_spec
                return
            if st == MEMORY:
                ts.held = True
                out.append(TaskFinishedMsg(key, ts.nbytes, 0.0, 0.0))
                return
            if st == FLIGHT:
                # The data may still arrive; compute only if it does not.
                ts.held = True
                ts.pending = ev
                return
            if st == FETCH:
                self._leave_fetch(ts)
            # fetch, missing, error: (re)compute it here
            self._clear_who_has(ts)
        self._setup_compute(ts, ev, out)

    def _setup_compute(
        self, ts: WorkerTask, ev: ComputeTaskEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        ts.run_spec = ev.run_spec
        ts.priority = ev.priority
        ts.held = True
        ts.resources = ev.resources if ev.resources else None
        ts.pending = None
        ts.coming_from = ""
        ts.waiting_count = 0
        ts.state = WAITING
        self._link_dependencies(ts, ev, out, True)
        if ts.waiting_count == 0:
            self._make_ready(ts)

    def _link_dependencies(
        self,
        ts: WorkerTask,
        ev: ComputeTaskEvent,
        out: list[WorkerMachineInstruction],
        link: bool,
    ) -> None:
        """Create/update dependency tasks from ``ev.who_has``; link them if ``link``."""
        tasks = self.tasks
        key = ts.key
        for dep_key, holders in ev.who_has.items():
            if dep_key == key:
                continue
            dts = tasks.get(dep_key)
            if dts is None:
                if not link:
                    continue
                dts = WorkerTask(dep_key, ts.priority)
                nb = ev.nbytes.get(dep_key)
                dts.nbytes = DEFAULT_NBYTES if nb is None else nb
                tasks[dep_key] = dts
                for peer in holders:
                    self._add_who_has(dts, peer)
                if dts.who_has:
                    self._enter_fetch(dts)
                else:
                    dts.state = MISSING
                    out.append(MissingDep(dep_key, ""))
            else:
                st = dts.state
                if st == FETCH or st == FLIGHT or st == MISSING:
                    if st != FLIGHT:
                        nb = ev.nbytes.get(dep_key)
                        if nb is not None:
                            dts.nbytes = nb
                    for peer in holders:
                        self._add_who_has(dts, peer)
                    if ts.priority < dts.priority:
                        dts.priority = ts.priority
                        if st == FETCH:
                            self._requeue_fetch(dts)
                    if st == MISSING and dts.who_has:
                        self._enter_fetch(dts)
            if link:
                if not ts.dependencies:
                    ts.dependencies = {}
                ts.dependencies[dep_key] = dts
                if not dts.dependents:
                    dts.dependents = {}
                dts.dependents[key] = ts
                if dts.state != MEMORY:
                    ts.waiting_count += 1

    # ------------------------------------------------------------------
    # Execution answers
    # ------------------------------------------------------------------

    def _finish_running(self, ts: WorkerTask, out: list[WorkerMachineInstruction]) -> None:
        """Common part of execute success/failure: free the slot and the deps."""
        del self.running[ts.key]
        res = ts.resources
        if res is not None:
            avail = self.available_resources
            for name, amount in res.items():
                avail[name] = avail.get(name, 0.0) + amount
        self._unlink_dependencies(ts, out)

    def _on_execute_success(
        self, ev: ExecuteSuccessEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        ts = self.running.get(ev.key)
        if ts is None:
            return  # not executing: stale or duplicate
        self.n_executed += 1
        if self.stray:
            self.stray.discard(ts.key)
        if ts.state == EXECUTING:
            out.append(TaskFinishedMsg(ts.key, ev.nbytes, ev.start, ev.stop))
            self._finish_running(ts, out)
            self._put_in_memory(ts, ev.nbytes)
            return
        # cancelled: the result is not reported
        self._finish_running(ts, out)
        if ts.dependents:
            self._put_in_memory(ts, ev.nbytes)
        else:
            ts.state = RELEASED  # let _forget skip the running guard
            out.append(ReleaseData(ts.key))
            self._forget(ts, out)

    def _on_execute_failure(
        self, ev: ExecuteFailureEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        ts = self.running.get(ev.key)
        if ts is None:
            return
        self.n_executed += 1
        self.n_failed += 1
        if self.stray and ts.key in self.stray:
            self.stray.discard(ts.key)
            out.append(ReleaseData(ts.key))
        self._finish_running(ts, out)
        if ts.state == EXECUTING:
            ts.state = ERROR
            out.append(
                TaskErredMsg(ts.key, ev.exception, ev.traceback, ev.start, ev.stop)
            )
            return
        # cancelled
        if ts.dependents:
            self._need_data(ts, out)
        else:
            ts.state = RELEASED
            self._forget(ts, out)

    # ------------------------------------------------------------------
    # Releasing
    # ------------------------------------------------------------------

    def _free_keys(self, keys: list[str], out: list[WorkerMachineInstruction]) -> None:
        tasks = self.tasks
        todo: list[WorkerTask] = []
        # Phase 1: drop the scheduler's hold on every key first, so that freeing
        # a chain in any order does not demote its members one by one.
        for key in keys:
            ts = tasks.get(key)
            if ts is None:
                continue
            ts.held = False
            ts.pending = None
            st = ts.state
            if st == EXECUTING:
                ts.state = CANCELLED
            elif st != CANCELLED:
                todo.append(ts)
        # Phase 2: forget what nothing here needs (cascades to dependencies).
        for ts in todo:
            if ts.state != RELEASED and not ts.dependents:
                self._forget(ts, out)
        # Phase 3: what is still needed by local dependents stays, as data.
        for ts in todo:
            st = ts.state
            if st == WAITING or st == READY or st == ERROR:
                if st == READY:
                    self._unqueue_ready(ts)
                self._unlink_dependencies(ts, out)
                ts.state = RELEASED
                self._need_data(ts, out)
            elif st == FLIGHT or st == FETCH or st == MISSING:
                ts.run_spec = None

    def _on_data_put(self, ev: DataPutEvent, out: list[WorkerMachineInstruction]) -> None:
        tasks = self.tasks
        for key, nbytes in ev.nbytes.items():
            ts = tasks.get(key)
            if ts is None:
                ts = WorkerTask(key, 0)
                tasks[key] = ts
                ts.held = True
                self._put_in_memory(ts, nbytes)
                continue
            st = ts.state
            if st == FETCH or st == MISSING:
                if st == FETCH:
                    self._leave_fetch(ts)
                self._clear_who_has(ts)
                ts.held = True
                self._put_in_memory(ts, nbytes)
                if ts.pending is not None:
                    ts.pending = None
                    out.append(TaskFinishedMsg(key, nbytes, 0.0, 0.0))
            elif st == MEMORY:
                ts.held = True
            # waiting/ready/executing/cancelled/error/flight: that course decides;
            # the stored value is overwritten or released with it.

    def _on_remove_replicas(
        self, ev: RemoveReplicasEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        tasks = self.tasks
        for key in ev.keys:
            ts = tasks.get(key)
            if ts is not None and ts.state == MEMORY:
                ts.held = False
                if not ts.dependents:
                    self._forget(ts, out)

    # ------------------------------------------------------------------
    # Transfer answers
    # ------------------------------------------------------------------

    def _flight_failed(
        self, ts: WorkerTask, out: list[WorkerMachineInstruction], report: bool
    ) -> None:
        """A flight task's transfer ended without its data."""
        ts.coming_from = ""
        ev = ts.pending
        if ev is not None:
            # The scheduler asked us to compute it meanwhile: do so.
            self._clear_who_has(ts)
            self._setup_compute(ts, ev, out)
        elif ts.who_has:
            self._enter_fetch(ts)
        else:
            ts.state = MISSING
            if report:
                out.append(MissingDep(ts.key, ""))

    def _on_gather_success(
        self, ev: GatherDepSuccessEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        peer = ev.peer
        tr = self._close_transfer(peer)
        received = ev.nbytes
        tasks = self.tasks
        for key, nb in received.items():
            ts = tasks.get(key)
            if ts is None:
                out.append(ReleaseData(key))
                continue
            st = ts.state
            if st == FLIGHT or st == FETCH or st == MISSING:
                self._fetched(ts, nb, out)
            elif st == EXECUTING or st == CANCELLED:
                # Its own result will overwrite the store entry, unless it fails.
                self.stray.add(key)
            elif st != MEMORY:
                out.append(ReleaseData(key))  # waiting/ready/error: computed here
        if tr is not None:
            lacking: list[str] = []
            for key in tr.keys:
                if key not in received:
                    lacking.append(key)
            if lacking:
                self._on_gather_missing_keys(peer, lacking, tr, out)

    def _fetched(self, ts: WorkerTask, nbytes: int, out: list[WorkerMachineInstruction]) -> None:
        if ts.state == FETCH:
            self._leave_fetch(ts)
        self._clear_who_has(ts)
        ts.coming_from = ""
        self.n_fetched += 1
        self.bytes_fetched += nbytes
        self._put_in_memory(ts, nbytes)
        if ts.pending is not None:
            ts.pending = None
            out.append(TaskFinishedMsg(ts.key, nbytes, 0.0, 0.0))
        elif self.keep_fetched:
            ts.held = True
            out.append(AddReplicaMsg(ts.key, nbytes))
        elif not ts.dependents:
            self._forget(ts, out)

    def _on_gather_missing(
        self, peer: str, keys: list[str], out: list[WorkerMachineInstruction]
    ) -> None:
        tr = self._close_transfer(peer)
        self._on_gather_missing_keys(peer, keys, tr, out)

    def _on_gather_missing_keys(
        self,
        peer: str,
        keys: list[str],
        tr: Transfer | None,
        out: list[WorkerMachineInstruction],
    ) -> None:
        tasks = self.tasks
        for key in keys:
            ts = tasks.get(key)
            if ts is not None and peer in ts.who_has:
                out.append(MissingDep(key, peer))
                self._remove_who_has(ts, peer, out, False)
        if tr is None:
            return
        lacking = set(keys)
        for key in tr.keys:
            ts = tasks.get(key)
            if ts is not None and ts.state == FLIGHT and ts.coming_from == peer:
                self._flight_failed(ts, out, key not in lacking)

    def _on_gather_failure(
        self, ev: GatherDepFailureEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        peer = ev.peer
        tr = self._close_transfer(peer)
        self.busy.discard(peer)
        hw = self.has_what.get(peer)
        tasks = self.tasks
        if hw is not None:
            for key in list(hw):
                self._remove_who_has(tasks[key], peer, out, True)
        if tr is None:
            return
        for key in tr.keys:
            ts = tasks.get(key)
            if ts is not None and ts.state == FLIGHT and ts.coming_from == peer:
                self._flight_failed(ts, out, True)

    def _on_gather_busy(
        self, ev: GatherDepBusyEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        peer = ev.peer
        tr = self._close_transfer(peer)
        if tr is None:
            return
        self.busy.add(peer)
        out.append(RetryBusyWorkerLater(peer))
        tasks = self.tasks
        for key in tr.keys:
            ts = tasks.get(key)
            if ts is not None and ts.state == FLIGHT and ts.coming_from == peer:
                self._flight_failed(ts, out, True)

    def _on_update_who_has(
        self, ev: UpdateWhoHasEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        tasks = self.tasks
        for key, holders in ev.who_has.items():
            ts = tasks.get(key)
            if ts is None:
                continue
            st = ts.state
            if st != FETCH and st != FLIGHT and st != MISSING:
                continue
            # Add first, so that a fetch task does not go missing in between.
            for peer in holders:
                self._add_who_has(ts, peer)
            if len(ts.who_has) > 0:
                for peer in list(ts.who_has):
                    if peer not in holders:
                        self._remove_who_has(ts, peer, out, True)
            if ts.state == MISSING and ts.who_has:
                self._enter_fetch(ts)

    # ------------------------------------------------------------------
    # Stealing
    # ------------------------------------------------------------------

    def _on_steal_request(
        self, ev: StealRequestEvent, out: list[WorkerMachineInstruction]
    ) -> None:
        key = ev.key
        ts = self.tasks.get(key)
        if ts is None:
            out.append(StealResponseMsg(key, None))
            return
        st = ts.state
        out.append(StealResponseMsg(key, STATE_NAMES[st]))
        if st == WAITING or st == READY:
            self._free_keys([key], out)

    # ------------------------------------------------------------------
    # Invariants
    # ------------------------------------------------------------------

    def validate(self) -> None:
        """Assert every internal invariant (for tests; O(size of state))."""
        assert not NO_TASKS and not NO_PEERS, "shared empty containers mutated"
        tally = _Tally(set(self.ready), set(self.constrained))
        for key, ts in self.tasks.items():
            name = STATE_NAMES[ts.state]
            assert ts.key == key, (key, ts)
            assert ts.state != RELEASED, ts
            self._validate_links(key, ts)
            self._validate_hold(ts)
            self._validate_holders(key, ts, tally)
            self._validate_queues(key, ts, tally)
            assert name in STATE_NAMES
        self._validate_execution_totals(tally)
        self._validate_data_totals(tally)
        if not self.paused:
            # Nothing runnable left idle.
            if len(self.running) < self.nthreads and self.n_ready:
                raise AssertionError("idle thread with ready tasks")

    def _validate_links(self, key: str, ts: WorkerTask) -> None:
        """Dependency links are mutual and ``waiting_count`` counts the missing ones."""
        tasks = self.tasks
        st = ts.state
        for dk, dts in ts.dependencies.items():
            assert dts.key == dk and tasks.get(dk) is dts, (ts, dts)
            assert dts.dependents.get(key) is ts, (ts, dts)
        for dk, dts in ts.dependents.items():
            assert dts.key == dk and tasks.get(dk) is dts, (ts, dts)
            assert dts.dependencies.get(key) is ts, (ts, dts)
            assert dts.state in (WAITING, READY, EXECUTING, CANCELLED), (ts, dts)
        if ts.dependencies:
            assert st in (WAITING, READY, EXECUTING, CANCELLED), ts
        missing_deps = 0
        for dts in ts.dependencies.values():
            if dts.state != MEMORY:
                missing_deps += 1
        if st == WAITING:
            assert ts.waiting_count == missing_deps > 0, (ts, missing_deps)
        elif st in (READY, EXECUTING):
            assert missing_deps == 0, ts
        if st != WAITING:
            assert ts.waiting_count == 0, ts

    def _validate_hold(self, ts: WorkerTask) -> None:
        """The scheduler's hold, the pending compute request and the run_spec."""
        st = ts.state
        if st in (WAITING, READY, EXECUTING, ERROR):
            assert ts.held, ts
        if st == CANCELLED:
            assert not ts.held, ts
        if not ts.held:
            assert ts.dependents or st == CANCELLED, f"{ts} should be released"
        if st == FLIGHT:
            assert ts.held == (ts.pending is not None), ts
        else:
            assert ts.pending is None, ts
        if st in (FETCH, MISSING):
            assert not ts.held, ts
        # run_spec is kept only while it may run
        if st in (FETCH, FLIGHT, MISSING):
            assert ts.run_spec is None, ts

    def _validate_holders(self, key: str, ts: WorkerTask, tally: _Tally) -> None:
        """Holders, the fetch queue entries and the transfer of a flight task."""
        st = ts.state
        assert len(set(ts.who_has)) == len(ts.who_has), ts
        assert self.address not in ts.who_has, ts
        if ts.who_has:
            assert st in (FETCH, FLIGHT, MISSING), ts
        has_what = tally.has_what
        for peer in ts.who_has:
            has_what.setdefault(peer, {})[key] = None
        if st == FETCH:
            assert ts.who_has, ts
            tally.n_fetch += 1
            needed = tally.needed
            for peer in ts.who_has:
                needed[peer] = needed.get(peer, 0) + 1
                heap = self.data_needed[peer]
                assert (ts.priority, ts.queue_seq, ts) in heap, (ts, peer)
        elif st == MISSING:
            assert not ts.who_has, ts
        elif st == FLIGHT:
            tr = self.in_flight.get(ts.coming_from)
            assert tr is not None and key in tr.keys, ts
        else:
            assert ts.coming_from == "", ts

    def _validate_queues(self, key: str, ts: WorkerTask, tally: _Tally) -> None:
        """Ready queue entries, running slots with their resources, and memory."""
        st = ts.state
        if st == READY:
            qk = ts.queue_key
            assert qk >> SEQ_BITS == ts.priority, ts
            if ts.resources is None:
                tally.n_ready += 1
                assert self.ready_tasks.get(qk) is ts and qk in tally.ready_keys, ts
            else:
                tally.n_constrained += 1
                assert self.constrained_tasks.get(qk) is ts, ts
                assert qk in tally.constrained_keys, ts
        if st in (EXECUTING, CANCELLED):
            assert self.running.get(key) is ts, ts
            if ts.resources is not None:
                used = tally.used
                for rn, amount in ts.resources.items():
                    used[rn] = used.get(rn, 0.0) + amount
        if st == MEMORY:
            tally.nbytes_memory += ts.nbytes

    def _validate_execution_totals(self, tally: _Tally) -> None:
        """Ready queue sizes, running slots and resources match the tasks."""
        tasks = self.tasks
        assert tally.n_ready == len(self.ready_tasks), (tally.n_ready, self.ready_tasks)
        assert tally.n_constrained == len(self.constrained_tasks), self.constrained_tasks
        if not self.ready_tasks:
            assert not self.ready
        if not self.constrained_tasks:
            assert not self.constrained
        for key, ts in self.running.items():
            assert tasks.get(key) is ts and ts.state in (EXECUTING, CANCELLED), ts
        assert len(self.running) <= self.nthreads
        used = tally.used
        for rn, total in self.total_resources.items():
            avail = self.available_resources.get(rn, 0.0)
            assert abs(avail + used.get(rn, 0.0) - total) < 1e-9, (rn, avail, used)

    def _validate_data_totals(self, tally: _Tally) -> None:
        """Fetch counts, holder index, memory and transfer totals match the tasks."""
        needed = tally.needed
        assert tally.n_fetch == self.n_fetch, (tally.n_fetch, self.n_fetch)
        assert needed == self.data_needed_count, (needed, self.data_needed_count)
        assert set(self.data_needed) == set(needed)
        assert tally.has_what == self.has_what, (tally.has_what, self.has_what)
        nbytes_mem = tally.nbytes_memory
        assert nbytes_mem == self.nbytes_in_memory, (nbytes_mem, self.nbytes_in_memory)
        assert len(self.in_flight) <= self.transfer_peers
        inflight_bytes = 0
        for peer, tr in self.in_flight.items():
            assert tr.peer == peer
            inflight_bytes += tr.total_nbytes
        assert inflight_bytes == self.bytes_in_flight
        for key in self.stray:
            assert key in self.running, key

