"""The scheduler's records: tasks, task groups, workers and clients.

These are native classes when compiled: attributes are declared, typed and
stored in slots.  They hold no logic beyond bookkeeping helpers; every state
change goes through :class:`sched_core.SchedulerState`.
"""

from __future__ import annotations

from typing import Final

from sched_core._states import (
    ERRED,
    MEMORY,
    N_STATES,
    NO_WORKER,
    PROCESSING,
    QUEUED,
    RELEASED,
    WAITING,
    state_name,
)

# Shared by every task without dependencies.  ``TaskState.dependencies`` is
# never mutated after creation, so sharing one empty list saves an allocation
# (and 56 bytes) per root task.
NO_DEPENDENCIES: Final[list[TaskState]] = []

# Durations are smoothed with this weight for the newest sample.
EMA_WEIGHT: Final = 0.2


class StateCounts:
    """How many tasks are in each state.

    Plain int attributes rather than a ``list[int]``: compiled, they are stored
    unboxed, so counting costs no allocation on the hot path.
    """

    released: int
    waiting: int
    queued: int
    no_worker: int
    processing: int
    memory: int
    erred: int
    forgotten: int

    def __init__(self) -> None:
        self.released = 0
        self.waiting = 0
        self.queued = 0
        self.no_worker = 0
        self.processing = 0
        self.memory = 0
        self.erred = 0
        self.forgotten = 0

    def move(self, old: int, new: int) -> None:
        self.add(old, -1)
        self.add(new, 1)

    def add(self, state: int, delta: int) -> None:
        if state == PROCESSING:
            self.processing += delta
        elif state == MEMORY:
            self.memory += delta
        elif state == QUEUED:
            self.queued += delta
        elif state == RELEASED:
            self.released += delta
        elif state == WAITING:
            self.waiting += delta
        elif state == ERRED:
            self.erred += delta
        elif state == NO_WORKER:
            self.no_worker += delta
        else:
            self.forgotten += delta

    def get(self, state: int) -> int:
        if state == PROCESSING:
            return self.processing
        if state == MEMORY:
            return self.memory
        if state == QUEUED:
            return self.queued
        if state == RELEASED:
            return self.released
        if state == WAITING:
            return self.waiting
        if state == ERRED:
            return self.erred
        if state == NO_WORKER:
            return self.no_worker
        return self.forgotten

    def as_list(self) -> list[int]:
        """Counts indexed by state number."""
        return [self.get(state) for state in range(N_STATES)]

    def __repr__(self) -> str:
        return f"<StateCounts {self.as_list()}>"


class TaskPrefix:
    """Tasks sharing a name prefix ("inc", "sum"): they share a duration estimate."""

    name: str
    duration_average: float  # seconds; negative until a first task finishes
    n_finished: int

    def __init__(self, name: str) -> None:
        self.name = name
        self.duration_average = -1.0
        self.n_finished = 0

    def add_duration(self, duration: float) -> None:
        if self.duration_average < 0.0:
            self.duration_average = duration
        else:
            self.duration_average += EMA_WEIGHT * (duration - self.duration_average)
        self.n_finished += 1

    def __repr__(self) -> str:
        return f"<TaskPrefix {self.name!r} avg={self.duration_average:.6f}s>"


class TaskGroup:
    """The tasks of one key group: counts by state, kept incrementally."""

    name: str
    prefix: TaskPrefix
    counts: StateCounts
    n_tasks: int  # alive (not forgotten) tasks
    dependencies: set[TaskGroup]
    nbytes_total: int

    def __init__(self, name: str, prefix: TaskPrefix) -> None:
        self.name = name
        self.prefix = prefix
        self.counts = StateCounts()
        self.n_tasks = 0
        self.dependencies = set()
        self.nbytes_total = 0

    def __repr__(self) -> str:
        return f"<TaskGroup {self.name!r} tasks={self.n_tasks}>"


class WorkerState:
    """The scheduler's view of one worker."""

    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float]
    # Dicts used as ordered sets: iteration order is insertion order, so every
    # decision that walks them is reproducible (see ``dsched replay``).
    processing: dict[TaskState, None]
    has_what: dict[TaskState, None]
    nbytes: int  # bytes of task results held there
    occupancy: float  # expected seconds of work assigned, summed
    capacity: int  # how many tasks may be in flight here (threads x queue depth)
    latency: float  # smoothed round trip, seconds
    memory: int  # process memory reported by the last heartbeat
    duration_average: float  # smoothed duration of tasks run here; < 0 if none yet
    nbytes_average: float  # smoothed size of task results made here
    n_finished: int
    alive: bool
    paused: bool  # past its memory pause threshold: no new tasks until it resumes
    retiring: bool  # being retired: paused for good, its only copies moving elsewhere
    retire_moves: dict[TaskState, WorkerState]  # while retiring: the worker each only copy is going to
    closing: bool  # retired: told to close, its removal is to follow
    index: int  # position in SchedulerState.worker_list

    def __init__(
        self, address: str, name: str, nthreads: int, memory_limit: int, resources: dict[str, float]
    ) -> None:
        self.address = address
        self.name = name
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = resources
        self.processing = {}
        self.has_what = {}
        self.nbytes = 0
        self.occupancy = 0.0
        self.capacity = nthreads
        self.latency = 0.001
        self.memory = 0
        self.duration_average = -1.0
        self.nbytes_average = 0.0
        self.n_finished = 0
        self.alive = True
        self.paused = False
        self.retiring = False
        self.retire_moves = {}
        self.closing = False
        self.index = -1

    def has_resources(self, needed: dict[str, float]) -> bool:
        for name, amount in needed.items():
            if self.resources.get(name, 0.0) < amount:
                return False
        return True

    def __repr__(self) -> str:
        return (
            f"<WorkerState {self.address!r} nthreads={self.nthreads} "
            f"processing={len(self.processing)} memory={len(self.has_what)}"
            f"{' retiring' if self.retiring else ' paused' if self.paused else ''}>"
        )


class ClientState:
    client_id: str
    wants: dict[TaskState, None]  # an ordered set

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.wants = {}

    def __repr__(self) -> str:
        return f"<ClientState {self.client_id!r} wants={len(self.wants)}>"


class TaskState:
    """One task (or one piece of scattered data) known to the scheduler.

    Counters replace Dask's per-task sets where only a count is needed:
    ``n_waiting`` is how many dependencies are not in memory, ``n_waiters`` how
    many dependents still need this task's data, ``n_dependents`` how many
    dependents are not forgotten.  ``SchedulerState._set_state`` keeps the first
    two exact; ``dependents`` may hold forgotten tasks, which are skipped and
    pruned lazily.
    """

    key: str
    state: int
    priority: int
    run_spec: object
    group: TaskGroup
    dependencies: list[TaskState]
    dependents: list[TaskState] | None
    n_dependents: int
    n_waiting: int
    n_waiters: int
    who_wants: list[ClientState] | None
    who_has: list[WorkerState] | None
    processing_on: WorkerState | None
    run_id: int  # of the latest ComputeTask sent for it
    # Batch numbers (see SchedulerState.batch) for judging workers' reports
    # that may have crossed the scheduler's instructions on the wire.
    freed_batch: int  # created, or last told a worker to drop it
    held_batch: int  # last gained a replica
    expected_duration: float
    nbytes: int
    retries: int
    suspicious: int
    worker_restrictions: list[str] | None
    resource_restrictions: dict[str, float] | None
    loose_restrictions: bool
    exception: object
    traceback: object
    exception_blame: TaskState | None
    steal_target: WorkerState | None

    def __init__(self, key: str, run_spec: object, group: TaskGroup, priority: int) -> None:
        self.key = key
        self.state = RELEASED
        self.priority = priority
        self.run_spec = run_spec
        self.group = group
        self.dependencies = NO_DEPENDENCIES
        self.dependents = None
        self.n_dependents = 0
        self.n_waiting = 0
        self.n_waiters = 0
        self.who_wants = None
        self.who_has = None
        self.processing_on = None
        self.run_id = 0
        self.freed_batch = 0
        self.held_batch = 0
        self.expected_duration = 0.0
        self.nbytes = -1
        self.retries = 0
        self.suspicious = 0
        self.worker_restrictions = None
        self.resource_restrictions = None
        self.loose_restrictions = False
        self.exception = None
        self.traceback = None
        self.exception_blame = None
        self.steal_target = None

    @property
    def state_name(self) -> str:
        return state_name(self.state)

    def is_wanted(self) -> bool:
        wants = self.who_wants
        return wants is not None and len(wants) > 0

    def is_restricted(self) -> bool:
        return self.worker_restrictions is not None or self.resource_restrictions is not None

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {state_name(self.state)}>"


def key_split(key: str) -> str:
    """The name prefix of a key: "inc-1f3a..." -> "inc", "('x-2b9e', 0, 1)" -> "x".

    Words after the first are kept while they are alphabetic and do not look
    like an 8-character hex token, as Dask does, so "read-csv-<token>" ->
    "read-csv".
    """
    if not key:
        return "?"
    start = 0
    end = len(key)
    first = key[0]
    if first == "(" or first == "[":
        start = 1
        while start < end and (key[start] == "'" or key[start] == '"' or key[start] == "("):
            start += 1
        comma = key.find(",", start)
        if comma >= 0:
            end = comma
        while end > start and (key[end - 1] == "'" or key[end - 1] == '"' or key[end - 1] == ")"):
            end -= 1
    dash = key.find("-", start, end)
    if dash < 0:
        return key[start:end] if end > start else "?"
    result_end = dash
    pos = dash + 1
    while pos < end:
        nxt = key.find("-", pos, end)
        word_end = end if nxt < 0 else nxt
        if word_end == pos or not _is_name_word(key, pos, word_end):
            break
        result_end = word_end
        if nxt < 0:
            break
        pos = nxt + 1
    return key[start:result_end] if result_end > start else "?"


def _is_name_word(key: str, start: int, end: int) -> bool:
    hexlike = end - start == 8
    for i in range(start, end):
        c = key[i]
        if not c.isalpha():
            return False
        if hexlike and not ("a" <= c <= "f"):
            hexlike = False
    return not hexlike


def key_group(key: str) -> str:
    """The group name of a key: the first element of a tuple key, else its prefix."""
    first = key[0] if key else ""
    if first == "(" or first == "[":
        start = 1
        # A nested tuple key ("(('x', 1), 2)") is grouped by its innermost first element.
        while start < len(key) and (key[start] == "'" or key[start] == '"' or key[start] == "(" or key[start] == "["):
            start += 1
        comma = key.find(",", start)
        end = comma if comma >= 0 else len(key)
        while end > start and (key[end - 1] == "'" or key[end - 1] == '"' or key[end - 1] == ")"):
            end -= 1
        if end > start:
            return key[start:end]
    return key_split(key)
