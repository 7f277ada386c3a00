"""The scheduler's queue of ready root tasks, lowest priority value first.

Root tasks of one submission become ready in priority order, so almost every
push is larger than anything queued before.  Those go to a FIFO run (a list
with a head index: O(1) push and pop, no hashing); only out-of-order pushes pay
for a heap.

Removing a task is O(1): the entry stays where it is and is skipped when it
surfaces, because the task is no longer in the "queued" state.  A task removed
and queued again may have two entries; either is at the right place, since a
task's priority never changes, and once one is popped the task is no longer
queued and the other is skipped.
"""

from __future__ import annotations

import heapq
from typing import Final

from sched_core._model import TaskState
from sched_core._states import QUEUED

# Rebuild when stale entries outnumber live ones by this much.
SLACK: Final = 64


class TaskQueue:
    n_queued: int
    _run: list[TaskState]  # increasing priority from _head on
    _head: int
    _heap: list[tuple[int, int, TaskState]]  # (priority, sequence, task)
    _sequence: int

    def __init__(self) -> None:
        self.n_queued = 0
        self._run = []
        self._head = 0
        self._heap = []
        self._sequence = 0

    def __len__(self) -> int:
        return self.n_queued

    def __bool__(self) -> bool:
        return self.n_queued > 0

    def push(self, ts: TaskState) -> None:
        """Queue ``ts``; the caller then moves it to the queued state."""
        self.n_queued += 1
        run = self._run
        if len(run) == self._head or ts.priority > run[len(run) - 1].priority:
            run.append(ts)
        else:
            self._sequence += 1
            heapq.heappush(self._heap, (ts.priority, self._sequence, ts))

    def remove(self, ts: TaskState) -> None:
        """``ts`` (queued) leaves the queue; the caller then moves it out of the queued state."""
        self.n_queued -= 1
        if self.n_queued == 0:
            self._clear()

    def pop(self) -> TaskState | None:
        """Take the queued task with the lowest priority value, or None if empty."""
        run = self._run
        heap = self._heap
        while self.n_queued > 0:
            if self._head < len(run) and (not heap or run[self._head].priority < heap[0][0]):
                ts = run[self._head]
                self._head += 1
            elif heap:
                ts = heapq.heappop(heap)[2]
            else:
                break
            if ts.state == QUEUED:
                self.n_queued -= 1
                self._tidy()
                return ts
        self._clear()
        return None

    def tasks(self) -> dict[int, TaskState]:
        """The queued tasks by priority (O(n): for inspection and tests)."""
        found: dict[int, TaskState] = {}
        for i in range(self._head, len(self._run)):
            ts = self._run[i]
            if ts.state == QUEUED:
                found[ts.priority] = ts
        for entry in self._heap:
            if entry[2].state == QUEUED:
                found[entry[0]] = entry[2]
        return found

    def _tidy(self) -> None:
        if self.n_queued == 0:
            self._clear()
            return
        head = self._head
        if head > 1024 and head * 2 > len(self._run):
            self._run = self._run[head:]
            self._head = 0
        if len(self._heap) + len(self._run) - self._head > 2 * self.n_queued + SLACK:
            live = self.tasks()
            self._run = [live[p] for p in sorted(live)]
            self._head = 0
            self._heap = []

    def _clear(self) -> None:
        self._run = []
        self._head = 0
        self._heap = []
