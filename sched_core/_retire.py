"""Retiring workers gracefully: their only copies move to other workers before they close.

A retiring worker (``RetireWorker``: a client asked, or the worker is shutting
down by itself) is paused for good, so placement gives it nothing new; what it
was assigned and has not reported goes back to be placed elsewhere at once.
Each result that exists only there is copied to another worker
(``AcquireReplicas``: the receiver fetches it from the retiring worker, as it
would a dependency, and reports the copy with ``ReplicasAdded``).  Targets are
the running (not paused, not retiring) workers holding the fewest bytes, ties
going to the least occupied; a batch of keys is spread over them.

After every batch of events the core checks each retiring worker: an only copy
whose move is not under way (it was never asked for, or its target died or is
retiring too) is asked for again; once no only copy is left - or none can go
anywhere, because no running worker remains - the core emits ``CloseWorker``.
Its removal follows as ``WorkerRemoved(expected=True)``.  A move that never
completes (a transfer failed) is the runtime's to bound with a timeout: it
closes the worker anyway, and what only it held is recomputed like any lost
result.
"""

from __future__ import annotations

import heapq

from sched_core._events import RetireWorker
from sched_core._instructions import AcquireReplicas, CloseWorker
from sched_core._model import TaskState, WorkerState
from sched_core._states import WAITING
from sched_core._transitions import TransitionEngine, priority_of


class RetiringEngine(TransitionEngine):
    """The transition engine plus the bookkeeping of workers being retired."""

    retiring: dict[WorkerState, None]  # an ordered set: workers retiring, not yet told to close
    n_retire_moves: int  # copies asked for on behalf of retiring workers, ever

    def __init__(self, allowed_failures: int, max_queue_depth: int, bandwidth: float) -> None:
        super().__init__(allowed_failures, max_queue_depth, bandwidth)
        self.retiring = {}
        self.n_retire_moves = 0

    def _on_retire_worker(self, event: RetireWorker) -> None:
        ws = self.workers.get(event.address)
        if ws is None or ws.retiring:
            return
        ws.retiring = True
        if not ws.paused:
            ws.paused = True
            self.n_paused += 1
        self.retiring[ws] = None
        self._place_elsewhere(ws)

    def _place_elsewhere(self, ws: WorkerState) -> None:
        """What ``ws`` was assigned goes back to placement (which now passes ``ws`` by)."""
        moved = list(ws.processing)
        if not moved:
            return
        moved.sort(key=priority_of)
        for ts in moved:
            self._unassign(ts)  # stops it there: a late result from ``ws`` is stale
            self._set_state(ts, WAITING)
        for ts in moved:
            if ts.state == WAITING and ts.n_waiting == 0:
                self._ready(ts)

    def _check_retirements(self) -> None:
        """Ask for the copies still missing; close the workers that hold no only copy any more."""
        for ws in list(self.retiring):
            if not ws.alive:
                del self.retiring[ws]
                ws.retire_moves = {}
                continue
            if self._move_only_copies(ws):
                continue
            del self.retiring[ws]
            ws.retire_moves = {}
            ws.closing = True
            self._out.append(CloseWorker(ws.address, "retired"))

    def _move_only_copies(self, ws: WorkerState) -> bool:
        """Ask for a copy of each result only ``ws`` holds; True while some are on their way."""
        moves = ws.retire_moves
        asked: dict[WorkerState, AcquireReplicas] = {}
        targets: list[tuple[int, float, int, WorkerState]] | None = None
        pending = False
        for ts in ws.has_what:
            holders = ts.who_has
            if holders is not None and len(holders) > 1:
                continue
            target = moves.get(ts)
            if target is not None and target.alive and not target.retiring:
                pending = True
                continue
            if targets is None:
                targets = self._retire_targets()
            if not targets:
                continue  # nowhere to go: the copy goes with the worker
            target = _take_least_loaded(targets, ts)
            moves[ts] = target
            self.n_retire_moves += 1
            pending = True
            request = asked.get(target)
            if request is None:
                request = asked[target] = AcquireReplicas(target.address, {}, {})
            request.who_has[ts.key] = [ws.address]
            request.nbytes[ts.key] = ts.nbytes
        self._out.extend(asked.values())
        return pending

    def _retire_targets(self) -> list[tuple[int, float, int, WorkerState]]:
        """Running workers as a heap: fewest bytes held first, then least occupied."""
        heap = [
            (w.nbytes, w.occupancy, w.index, w) for w in self.worker_list if not w.paused and not w.retiring
        ]
        heapq.heapify(heap)
        return heap


def _take_least_loaded(targets: list[tuple[int, float, int, WorkerState]], ts: TaskState) -> WorkerState:
    """Pop the least loaded target and push it back with ``ts``'s bytes added (spreads a batch)."""
    nbytes, occupancy, index, target = heapq.heappop(targets)
    heapq.heappush(targets, (nbytes + max(ts.nbytes, 1), occupancy, index, target))
    return target
