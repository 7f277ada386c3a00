"""The scheduler's queue of ready root tasks, lowest priority value first.

Tasks are looked up by priority (unique per task) in a dict, which is the truth
about what is queued; the ordering structures hold only ints, and entries whose
task has left the queue are skipped when they surface.

Root tasks of one submission become ready in priority order, so most pushes are
larger than anything queued before.  Those go to a FIFO run (a list with a head
index: O(1) push and pop); only out-of-order pushes pay for the heap.
"""

from __future__ import annotations

import heapq
from typing import Final

from sched_core._model import TaskState

# Rebuild when stale entries outnumber live ones by this much.
SLACK: Final = 64


class TaskQueue:
    tasks: dict[int, TaskState]
    _run: list[int]  # increasing; live part starts at _head
    _head: int
    _heap: list[int]

    def __init__(self) -> None:
        self.tasks = {}
        self._run = []
        self._head = 0
        self._heap = []

    def __len__(self) -> int:
        return len(self.tasks)

    def __bool__(self) -> bool:
        return len(self.tasks) > 0

    def push(self, ts: TaskState) -> None:
        priority = ts.priority
        self.tasks[priority] = ts
        run = self._run
        if len(run) == self._head or priority > run[len(run) - 1]:
            run.append(priority)
        else:
            heapq.heappush(self._heap, priority)

    def remove(self, ts: TaskState) -> None:
        del self.tasks[ts.priority]
        if not self.tasks:
            self._clear_order()

    def pop(self) -> TaskState | None:
        """The queued task with the lowest priority value, or None if empty."""
        tasks = self.tasks
        run = self._run
        heap = self._heap
        while tasks:
            if self._head < len(run) and (not heap or run[self._head] < heap[0]):
                priority = run[self._head]
                self._head += 1
            elif heap:
                priority = heapq.heappop(heap)
            else:
                break
            ts = tasks.pop(priority, None)
            if ts is not None:
                self._tidy()
                return ts
        self._clear_order()
        return None

    def _tidy(self) -> None:
        if not self.tasks:
            self._clear_order()
            return
        head = self._head
        if head > 1024 and head * 2 > len(self._run):
            self._run = self._run[head:]
            self._head = 0
        if len(self._heap) + len(self._run) - self._head > 2 * len(self.tasks) + SLACK:
            self._run = sorted(self.tasks)
            self._head = 0
            self._heap = []

    def _clear_order(self) -> None:
        self._run = []
        self._head = 0
        self._heap = []
        if not self.tasks:
            self.tasks = {}  # a dict never shrinks when emptied by deletion
