"""The worker machine's state and the bookkeeping under its event handlers.

:class:`WorkerQueues` holds every attribute of
:class:`~sched_core._worker.WorkerMachine` (its subclass, which adds the entry
point and the event handlers) and the operations the handlers are built from:
the ready queues and starting execution, memory accounting and forgetting
tasks, the holders of each task and the per-peer fetch queues, and starting and
closing transfers.

Queues use lazy deletion.  The ready queues are heaps of int sort keys
``(priority << 40) + seq`` (cheap to compare, no tuple per entry) beside a dict
from live sort key to task: a heap entry is valid iff it is still in the dict.
The per-peer fetch queues are heaps of ``(priority, seq, task)``: an entry is
valid iff the task is still in state fetch, lists the peer, and
``task.queue_seq == seq``.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from sched_core._worker_events import (
    Execute,
    GatherDep,
    MissingDep,
    ReleaseData,
    WorkerMachineInstruction,
)
from sched_core._worker_task import (
    CANCELLED,
    DEFAULT_NBYTES,
    DEFAULT_TRANSFER_MESSAGE_BYTES,
    DEFAULT_TRANSFER_PEERS,
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
    SEQ_MASK,
    WAITING,
    HeapEntry,
    Transfer,
    WorkerTask,
)


class WorkerQueues:
    """State of one worker's task machine and its bookkeeping operations.

    Not used on its own: :class:`~sched_core._worker.WorkerMachine` is the
    machine.  The constructor arguments are documented there.
    """

    address: str
    nthreads: int
    total_resources: dict[str, float]
    available_resources: dict[str, float]
    transfer_message_bytes: int
    transfer_peers: int
    keep_fetched: bool

    tasks: dict[str, WorkerTask]
    # ready tasks without / with resource requirements: heap of sort keys,
    # and the live sort keys -> task
    ready: list[int]
    ready_tasks: dict[int, WorkerTask]
    constrained: list[int]
    constrained_tasks: dict[int, WorkerTask]
    running: dict[str, WorkerTask]
    # peer -> heap of fetch tasks that peer holds; count of valid tasks per peer
    data_needed: dict[str, list[HeapEntry]]
    data_needed_count: dict[str, int]
    n_fetch: int
    # peer -> keys (fetch/flight/missing tasks) listing the peer as holder
    has_what: dict[str, dict[str, None]]
    in_flight: dict[str, Transfer]
    busy: set[str]
    paused: bool
    # running keys whose store entry was overwritten by fetched data
    stray: set[str]
    seq: int

    nbytes_in_memory: int
    bytes_in_flight: int
    n_executed: int
    n_failed: int
    n_transfers: int
    n_fetched: int
    bytes_fetched: int

    def __init__(
        self,
        address: str,
        nthreads: int = 1,
        resources: dict[str, float] | None = None,
        transfer_message_bytes: int = DEFAULT_TRANSFER_MESSAGE_BYTES,
        transfer_peers: int = DEFAULT_TRANSFER_PEERS,
        keep_fetched: bool = True,
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be >= 1, got {nthreads}")
        if transfer_peers < 1:
            raise ValueError(f"transfer_peers must be >= 1, got {transfer_peers}")
        self.address = address
        self.nthreads = nthreads
        self.total_resources = dict(resources) if resources else {}
        self.available_resources = dict(self.total_resources)
        self.transfer_message_bytes = transfer_message_bytes
        self.transfer_peers = transfer_peers
        self.keep_fetched = keep_fetched
        self.tasks = {}
        self.ready = []
        self.ready_tasks = {}
        self.constrained = []
        self.constrained_tasks = {}
        self.running = {}
        self.data_needed = {}
        self.data_needed_count = {}
        self.n_fetch = 0
        self.has_what = {}
        self.in_flight = {}
        self.busy = set()
        self.paused = False
        self.stray = set()
        self.seq = 0
        self.nbytes_in_memory = 0
        self.bytes_in_flight = 0
        self.n_executed = 0
        self.n_failed = 0
        self.n_transfers = 0
        self.n_fetched = 0
        self.bytes_fetched = 0

    # ------------------------------------------------------------------
    # Ready queues and starting execution
    # ------------------------------------------------------------------

    def _make_ready(self, ts: WorkerTask) -> None:
        ts.state = READY
        self.seq += 1
        qk = (ts.priority << SEQ_BITS) + (self.seq & SEQ_MASK)
        ts.queue_key = qk
        if ts.resources is None:
            heappush(self.ready, qk)
            self.ready_tasks[qk] = ts
        else:
            heappush(self.constrained, qk)
            self.constrained_tasks[qk] = ts

    def _unqueue_ready(self, ts: WorkerTask) -> None:
        """``ts`` leaves state ready other than by being popped (entry goes stale)."""
        if ts.resources is None:
            del self.ready_tasks[ts.queue_key]
            if not self.ready_tasks:
                self.ready.clear()
        else:
            del self.constrained_tasks[ts.queue_key]
            if not self.constrained_tasks:
                self.constrained.clear()

    def _resources_fit(self, res: dict[str, float]) -> bool:
        avail = self.available_resources
        for name, amount in res.items():
            if avail.get(name, 0.0) < amount:
                return False
        return True

    def _pop_next_ready(self) -> WorkerTask | None:
        ready = self.ready
        ready_tasks = self.ready_tasks
        best: WorkerTask | None = None
        best_key = 0
        while ready:
            qk = ready[0]
            t = ready_tasks.get(qk)
            if t is not None:
                best = t
                best_key = qk
                break
            heappop(ready)
        constrained = self.constrained
        ctasks = self.constrained_tasks
        while constrained:
            qk = constrained[0]
            cts = ctasks.get(qk)
            if cts is None:
                heappop(constrained)
                continue
            res = cts.resources
            if res is not None and self._resources_fit(res):
                if best is None or qk < best_key:
                    heappop(constrained)
                    del ctasks[qk]
                    if not ctasks:
                        constrained.clear()
                    avail = self.available_resources
                    for name, amount in res.items():
                        avail[name] = avail.get(name, 0.0) - amount
                    return cts
            break
        if best is not None:
            heappop(ready)
            del ready_tasks[best_key]
            if not ready_tasks:
                ready.clear()
        return best

    def _ensure_computing(self, out: list[WorkerMachineInstruction]) -> None:
        if self.paused:
            return
        running = self.running
        nthreads = self.nthreads
        while len(running) < nthreads:
            if not self.ready_tasks and not self.constrained_tasks:
                break
            ts = self._pop_next_ready()
            if ts is None:
                break
            ts.state = EXECUTING
            running[ts.key] = ts
            out.append(Execute(ts.key, ts.run_spec))

    # ------------------------------------------------------------------
    # Memory and forgetting
    # ------------------------------------------------------------------

    def _put_in_memory(self, ts: WorkerTask, nbytes: int) -> None:
        ts.state = MEMORY
        ts.nbytes = nbytes
        self.nbytes_in_memory += nbytes
        for dts in ts.dependents.values():
            if dts.state == WAITING:
                dts.waiting_count -= 1
                if dts.waiting_count == 0:
                    self._make_ready(dts)

    def _need_data(self, ts: WorkerTask, out: list[WorkerMachineInstruction]) -> None:
        """``ts`` is no longer to be computed here but tasks here need its data."""
        ts.run_spec = None
        ts.resources = None
        ts.pending = None
        if ts.nbytes == 0:
            ts.nbytes = DEFAULT_NBYTES
        if ts.who_has:
            self._enter_fetch(ts)
        else:
            ts.state = MISSING
            out.append(MissingDep(ts.key, ""))

    def _unlink_dependencies(
        self, ts: WorkerTask, out: list[WorkerMachineInstruction]
    ) -> None:
        deps = ts.dependencies
        if not deps:
            return
        ts.dependencies = NO_TASKS
        ts.waiting_count = 0
        key = ts.key
        for dts in deps.values():
            del dts.dependents[key]
            if not dts.dependents and not dts.held:
                st = dts.state
                if st != EXECUTING and st != CANCELLED and st != RELEASED:
                    self._forget(dts, out)

    def _forget(self, root: WorkerTask, out: list[WorkerMachineInstruction]) -> None:
        """Remove ``root`` (unheld, no dependents) and whatever only it needed.

        Iterative, so that long chains do not recurse deeply.
        """
        stack: list[WorkerTask] | None = None
        tasks = self.tasks
        ts = root
        while True:
            st = ts.state
            if st == EXECUTING or st == CANCELLED:
                # a thread is still running it (never reached: callers check)
                if not stack:
                    return
                ts = stack.pop()
                continue
            if st == FETCH:
                self._leave_fetch(ts)
            elif st == READY:
                self._unqueue_ready(ts)
            elif st == MEMORY:
                self.nbytes_in_memory -= ts.nbytes
                out.append(ReleaseData(ts.key))
            # flight: the transfer record keeps the key; its data is released
            # when the answer arrives.
            if ts.who_has:
                self._clear_who_has(ts)
            if tasks.get(ts.key) is ts:
                del tasks[ts.key]
            ts.state = RELEASED
            ts.pending = None
            ts.run_spec = None
            deps = ts.dependencies
            if deps:
                ts.dependencies = NO_TASKS
                ts.waiting_count = 0
                key = ts.key
                for dts in deps.values():
                    del dts.dependents[key]
                    if not dts.dependents and not dts.held:
                        dst = dts.state
                        if dst != EXECUTING and dst != CANCELLED and dst != RELEASED:
                            if stack is None:
                                stack = [dts]
                            else:
                                stack.append(dts)
            if not stack:
                return
            ts = stack.pop()

    # ------------------------------------------------------------------
    # Holders and the fetch queues
    # ------------------------------------------------------------------

    def _add_who_has(self, ts: WorkerTask, peer: str) -> None:
        if peer == self.address or peer in ts.who_has:
            return
        if ts.who_has:
            ts.who_has.append(peer)
        else:
            ts.who_has = [peer]
        hw = self.has_what.get(peer)
        if hw is None:
            hw = {}
            self.has_what[peer] = hw
        hw[ts.key] = None
        if ts.state == FETCH:
            self._push_needed(peer, (ts.priority, ts.queue_seq, ts))
            self.data_needed_count[peer] += 1

    def _remove_who_has(
        self, ts: WorkerTask, peer: str, out: list[WorkerMachineInstruction], report: bool
    ) -> None:
        """Forget ``peer`` as a holder of ``ts``; a fetch task left without
        holders goes missing (reported with MissingDep if ``report``)."""
        if peer not in ts.who_has:
            return
        ts.who_has.remove(peer)
        hw = self.has_what[peer]
        del hw[ts.key]
        if not hw:
            del self.has_what[peer]
        if ts.state == FETCH:
            self._dec_needed(peer)
            if not ts.who_has:
                self.n_fetch -= 1
                ts.state = MISSING
                if report:
                    out.append(MissingDep(ts.key, ""))

    def _clear_who_has(self, ts: WorkerTask) -> None:
        """Drop all holders of a task that is not in state fetch."""
        key = ts.key
        has_what = self.has_what
        for peer in ts.who_has:
            hw = has_what[peer]
            del hw[key]
            if not hw:
                del has_what[peer]
        ts.who_has = NO_PEERS

    def _push_needed(self, peer: str, entry: HeapEntry) -> None:
        heap = self.data_needed.get(peer)
        if heap is None:
            self.data_needed[peer] = [entry]
            self.data_needed_count[peer] = 0
        else:
            heappush(heap, entry)

    def _dec_needed(self, peer: str) -> None:
        c = self.data_needed_count[peer] - 1
        if c == 0:
            del self.data_needed_count[peer]
            del self.data_needed[peer]
        else:
            self.data_needed_count[peer] = c

    def _enter_fetch(self, ts: WorkerTask) -> None:
        """Queue ``ts`` (with at least one holder) for fetching."""
        ts.state = FETCH
        self.seq += 1
        ts.queue_seq = self.seq
        self.n_fetch += 1
        entry = (ts.priority, self.seq, ts)
        for peer in ts.who_has:
            self._push_needed(peer, entry)
            self.data_needed_count[peer] += 1

    def _requeue_fetch(self, ts: WorkerTask) -> None:
        """Priority of a fetch task changed: push fresh entries."""
        self.seq += 1
        ts.queue_seq = self.seq
        entry = (ts.priority, self.seq, ts)
        for peer in ts.who_has:
            self._push_needed(peer, entry)

    def _leave_fetch(self, ts: WorkerTask) -> None:
        self.n_fetch -= 1
        for peer in ts.who_has:
            self._dec_needed(peer)

    def _clean_top(self, peer: str, heap: list[HeapEntry]) -> bool:
        """Pop stale entries off ``peer``'s heap; True if a valid one remains."""
        while heap:
            _, seq, ts = heap[0]
            if ts.state == FETCH and ts.queue_seq == seq and peer in ts.who_has:
                return True
            heappop(heap)
        return False

    # ------------------------------------------------------------------
    # Starting and closing transfers
    # ------------------------------------------------------------------

    def _ensure_communicating(self, out: list[WorkerMachineInstruction]) -> None:
        if self.paused or self.n_fetch == 0:
            return
        in_flight = self.in_flight
        limit = self.transfer_peers
        if len(in_flight) >= limit:
            return
        busy = self.busy
        # One candidate per free peer, ranked by its most urgent key.
        cands: list[tuple[int, int, str]] = []
        for peer, heap in self.data_needed.items():
            if peer in in_flight or peer in busy:
                continue
            if self._clean_top(peer, heap):
                top = heap[0]
                cands.append((top[0], top[1], peer))
        heapify(cands)
        while cands and len(in_flight) < limit:
            prio, seq, peer = heappop(cands)
            heap2 = self.data_needed.get(peer)
            if heap2 is None or not self._clean_top(peer, heap2):
                continue  # earlier transfers took all its keys
            top = heap2[0]
            if top[0] != prio or top[1] != seq:
                heappush(cands, (top[0], top[1], peer))  # re-rank
                continue
            self._start_transfer(peer, heap2, out)

    def _start_transfer(
        self, peer: str, heap: list[HeapEntry], out: list[WorkerMachineInstruction]
    ) -> None:
        keys: list[str] = []
        total = 0
        limit = self.transfer_message_bytes
        while heap:
            _, seq, ts = heap[0]
            if not (ts.state == FETCH and ts.queue_seq == seq and peer in ts.who_has):
                heappop(heap)
                continue
            if keys and total + ts.nbytes > limit:
                break
            heappop(heap)
            self._leave_fetch(ts)
            ts.state = FLIGHT
            ts.coming_from = peer
            keys.append(ts.key)
            total += ts.nbytes
        self.in_flight[peer] = Transfer(peer, keys, total)
        self.bytes_in_flight += total
        self.n_transfers += 1
        out.append(GatherDep(peer, list(keys), total))

    def _close_transfer(self, peer: str) -> Transfer | None:
        tr = self.in_flight.pop(peer, None)
        if tr is not None:
            self.bytes_in_flight -= tr.total_nbytes
        return tr
