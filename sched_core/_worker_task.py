"""The worker machine's records: task states, :class:`WorkerTask`, :class:`Transfer`.

Task states
-----------
``waiting``   asked to compute; some dependency not in local memory yet
``ready``     asked to compute; all dependencies here; waiting for a thread
``executing`` running on a thread
``cancelled`` still running on a thread, but freed by the scheduler: its result
              is dropped and not reported (unless it is asked for again)
``memory``    value in the runtime's data store
``error``     running it raised (reported; kept until freed)
``fetch``     needed here as a dependency; to be fetched from a peer
``flight``    being fetched from one peer
``missing``   needed as a dependency, no known holder left (every transition
              into missing is reported once with MissingDep)
``released``  not tracked (tasks in this state are removed from ``tasks``)

Lifetime rule: a task stays while the scheduler *holds* it here (asked to
compute it and has not freed it, or knows its data is here) or while some task
here still needs it as a dependency; a running task (executing/cancelled) stays
until its thread finishes.  Memory is dropped (``ReleaseData``) only when both
the scheduler's hold and the local need are gone.
"""

from __future__ import annotations

from typing import Final

from sched_core._worker_events import ComputeTaskEvent

RELEASED: Final = 0
WAITING: Final = 1
READY: Final = 2
EXECUTING: Final = 3
CANCELLED: Final = 4
MEMORY: Final = 5
ERROR: Final = 6
FETCH: Final = 7
FLIGHT: Final = 8
MISSING: Final = 9

STATE_NAMES: Final = (
    "released",
    "waiting",
    "ready",
    "executing",
    "cancelled",
    "memory",
    "error",
    "fetch",
    "flight",
    "missing",
)

DEFAULT_NBYTES: Final = 1024
"""Size assumed for a dependency whose size the scheduler did not give."""
DEFAULT_TRANSFER_MESSAGE_BYTES: Final = 50_000_000
DEFAULT_TRANSFER_PEERS: Final = 10
SEQ_BITS: Final = 40
SEQ_MASK: Final = (1 << 40) - 1


class WorkerTask:
    """One key known to this worker."""

    key: str
    state: int
    priority: int
    # The scheduler holds this task here (see module docstring).
    held: bool
    run_spec: object
    resources: dict[str, float] | None
    nbytes: int
    # Links exist only while the dependent still needs its dependencies
    # (waiting, ready, executing, cancelled).
    dependencies: dict[str, WorkerTask]
    dependents: dict[str, WorkerTask]
    waiting_count: int
    # Holders to fetch from (fetch/flight/missing only); never our own address.
    who_has: list[str]
    # The peer a flight task is coming from.
    coming_from: str
    # Validity stamp for fetch heap entries; sort key in the ready queues.
    queue_seq: int
    queue_key: int
    # A compute request that arrived while the data was in flight.
    pending: ComputeTaskEvent | None

    def __init__(self, key: str, priority: int) -> None:
        self.key = key
        self.state = RELEASED
        self.priority = priority
        self.held = False
        self.run_spec = None
        self.resources = None
        self.nbytes = 0
        # Shared, never-mutated empty containers until first use: most tasks
        # never get dependencies, dependents or holders (fewer allocations).
        self.dependencies = NO_TASKS
        self.dependents = NO_TASKS
        self.waiting_count = 0
        self.who_has = NO_PEERS
        self.coming_from = ""
        self.queue_seq = 0
        self.queue_key = 0
        self.pending = None

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    def __repr__(self) -> str:
        return (
            f"<WorkerTask {self.key!r} {STATE_NAMES[self.state]} prio={self.priority}"
            f"{' held' if self.held else ''}>"
        )


NO_TASKS: Final[dict[str, WorkerTask]] = {}
NO_PEERS: Final[list[str]] = []


class Transfer:
    """One GatherDep request in flight to ``peer``."""

    peer: str
    keys: list[str]
    total_nbytes: int

    def __init__(self, peer: str, keys: list[str], total_nbytes: int) -> None:
        self.peer = peer
        self.keys = keys
        self.total_nbytes = total_nbytes

    def __repr__(self) -> str:
        return (
            f"<Transfer from {self.peer!r} keys={self.keys!r} "
            f"nbytes={self.total_nbytes}>"
        )


HeapEntry = tuple[int, int, WorkerTask]
