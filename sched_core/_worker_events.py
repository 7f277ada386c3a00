"""Events and instructions of the worker-side task state machine.

The runtime (``dsched``) turns messages from the scheduler, from peers and from
its executor threads into the *events* below, feeds them in batches to
:meth:`sched_core._worker.WorkerMachine.handle_events`, and carries out the
*instructions* it gets back.  Both kinds are plain native classes: the runtime
reads their attributes and must treat them as read-only.

Payloads that belong to user code (``run_spec``, ``exception``, ``traceback``)
are typed ``object`` and passed through untouched.

Conventions the runtime must follow (the machine copes with races, but these are
the intended protocols):

* every :class:`GatherDep` is answered by exactly one of
  :class:`GatherDepSuccessEvent`, :class:`GatherDepMissingEvent`,
  :class:`GatherDepFailureEvent` or :class:`GatherDepBusyEvent` for that peer;
* every :class:`Execute` is answered by exactly one of
  :class:`ExecuteSuccessEvent` or :class:`ExecuteFailureEvent`;
* the runtime stores a task's value *before* sending ExecuteSuccess or
  GatherDepSuccess, and drops it on :class:`ReleaseData`;
* :class:`RetryBusyWorkerLater` asks for a :class:`RetryBusyWorkerEvent` for the
  same peer after a short delay (backoff is the runtime's choice).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


class WorkerEvent:
    """Base class of every event accepted by ``WorkerMachine.handle_events``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ComputeTaskEvent(WorkerEvent):
    """The scheduler asks this worker to run ``key``.

    ``who_has`` maps *every* dependency key to the addresses holding it (an empty
    list, or this worker's own address, is fine for a dependency already held
    here).  ``nbytes`` gives dependency sizes where known.  ``priority``: lower
    runs first.  ``resources`` are abstract resources the task needs while it
    executes (``None``: none).
    """

    key: str
    run_spec: object
    priority: int
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]
    resources: dict[str, float] | None

    def __init__(
        self,
        key: str,
        run_spec: object,
        priority: int,
        who_has: dict[str, list[str]],
        nbytes: dict[str, int],
        resources: dict[str, float] | None = None,
    ) -> None:
        self.key = key
        self.run_spec = run_spec
        self.priority = priority
        self.who_has = who_has
        self.nbytes = nbytes
        self.resources = resources

    def __repr__(self) -> str:
        return (
            f"ComputeTaskEvent(key={self.key!r}, priority={self.priority}, "
            f"who_has={self.who_has!r}, nbytes={self.nbytes!r}, "
            f"resources={self.resources!r})"
        )


class FreeKeysEvent(WorkerEvent):
    """The scheduler no longer needs these keys here: release data, cancel work."""

    keys: list[str]

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __repr__(self) -> str:
        return f"FreeKeysEvent(keys={self.keys!r})"


class RemoveReplicasEvent(WorkerEvent):
    """The scheduler drops these replicas (kept elsewhere): release them if in memory."""

    keys: list[str]

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __repr__(self) -> str:
        return f"RemoveReplicasEvent(keys={self.keys!r})"


class ExecuteSuccessEvent(WorkerEvent):
    """A thread finished running ``key``; the runtime has stored its result."""

    key: str
    nbytes: int
    start: float
    stop: float

    def __init__(self, key: str, nbytes: int, start: float, stop: float) -> None:
        self.key = key
        self.nbytes = nbytes
        self.start = start
        self.stop = stop

    def __repr__(self) -> str:
        return (
            f"ExecuteSuccessEvent(key={self.key!r}, nbytes={self.nbytes}, "
            f"start={self.start}, stop={self.stop})"
        )


class ExecuteFailureEvent(WorkerEvent):
    """Running ``key`` raised; exception and traceback are opaque payloads."""

    key: str
    exception: object
    traceback: object
    start: float
    stop: float

    def __init__(
        self, key: str, exception: object, traceback: object, start: float, stop: float
    ) -> None:
        self.key = key
        self.exception = exception
        self.traceback = traceback
        self.start = start
        self.stop = stop

    def __repr__(self) -> str:
        return (
            f"ExecuteFailureEvent(key={self.key!r}, start={self.start}, "
            f"stop={self.stop})"
        )


class GatherDepSuccessEvent(WorkerEvent):
    """``peer`` answered a GatherDep; ``nbytes`` maps each key received to its size.

    Keys that were requested but are absent from ``nbytes`` are treated as
    missing on that peer (as in :class:`GatherDepMissingEvent`).
    """

    peer: str
    nbytes: dict[str, int]

    def __init__(self, peer: str, nbytes: dict[str, int]) -> None:
        self.peer = peer
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"GatherDepSuccessEvent(peer={self.peer!r}, nbytes={self.nbytes!r})"


class GatherDepMissingEvent(WorkerEvent):
    """``peer`` answered but does not hold ``keys``.  Closes the request to ``peer``."""

    peer: str
    keys: list[str]

    def __init__(self, peer: str, keys: list[str]) -> None:
        self.peer = peer
        self.keys = keys

    def __repr__(self) -> str:
        return f"GatherDepMissingEvent(peer={self.peer!r}, keys={self.keys!r})"


class GatherDepFailureEvent(WorkerEvent):
    """``peer`` is unreachable or died: forget it as a holder of every key."""

    peer: str
    keys: list[str]

    def __init__(self, peer: str, keys: list[str]) -> None:
        self.peer = peer
        self.keys = keys

    def __repr__(self) -> str:
        return f"GatherDepFailureEvent(peer={self.peer!r}, keys={self.keys!r})"


class GatherDepBusyEvent(WorkerEvent):
    """``peer`` is too busy to serve ``keys`` now; try elsewhere or later."""

    peer: str
    keys: list[str]

    def __init__(self, peer: str, keys: list[str]) -> None:
        self.peer = peer
        self.keys = keys

    def __repr__(self) -> str:
        return f"GatherDepBusyEvent(peer={self.peer!r}, keys={self.keys!r})"


class RetryBusyWorkerEvent(WorkerEvent):
    """The delay asked for by :class:`RetryBusyWorkerLater` has passed."""

    peer: str

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def __repr__(self) -> str:
        return f"RetryBusyWorkerEvent(peer={self.peer!r})"


class StealRequestEvent(WorkerEvent):
    """The scheduler wants to move ``key`` to another worker."""

    key: str

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"StealRequestEvent(key={self.key!r})"


class UpdateWhoHasEvent(WorkerEvent):
    """New, authoritative holder lists for keys this worker may be fetching."""

    who_has: dict[str, list[str]]

    def __init__(self, who_has: dict[str, list[str]]) -> None:
        self.who_has = who_has

    def __repr__(self) -> str:
        return f"UpdateWhoHasEvent(who_has={self.who_has!r})"


class DataPutEvent(WorkerEvent):
    """The runtime stored these values here on a peer's request (scatter).

    ``nbytes`` maps each key to its size.  The keys are held by the scheduler
    (which hears of them from the client) until it frees them.  A key this
    worker is computing or fetching keeps that course; its value wins.
    """

    nbytes: dict[str, int]

    def __init__(self, nbytes: dict[str, int]) -> None:
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"DataPutEvent(nbytes={self.nbytes!r})"


class PauseEvent(WorkerEvent):
    """Memory pressure: start nothing new (no Execute, no GatherDep)."""

    def __repr__(self) -> str:
        return "PauseEvent()"


class UnpauseEvent(WorkerEvent):
    """Memory pressure is over."""

    def __repr__(self) -> str:
        return "UnpauseEvent()"


# ---------------------------------------------------------------------------
# Instructions
# ---------------------------------------------------------------------------

# Instructions define ``__eq__`` (handy in tests and replays); they are not hashable.


class WorkerMachineInstruction:
    """Base class of every instruction returned by ``WorkerMachine.handle_events``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Execute(WorkerMachineInstruction):
    """Run ``key`` on a thread now; all its dependencies are in the data store."""

    key: str
    run_spec: object

    def __init__(self, key: str, run_spec: object) -> None:
        self.key = key
        self.run_spec = run_spec

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Execute)
            and self.key == other.key
            and self.run_spec == other.run_spec
        )

    def __repr__(self) -> str:
        return f"Execute(key={self.key!r})"


class GatherDep(WorkerMachineInstruction):
    """Fetch ``keys`` from ``peer`` in one request (``total_nbytes`` expected)."""

    peer: str
    keys: list[str]
    total_nbytes: int

    def __init__(self, peer: str, keys: list[str], total_nbytes: int) -> None:
        self.peer = peer
        self.keys = keys
        self.total_nbytes = total_nbytes

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GatherDep)
            and self.peer == other.peer
            and self.keys == other.keys
            and self.total_nbytes == other.total_nbytes
        )

    def __repr__(self) -> str:
        return (
            f"GatherDep(peer={self.peer!r}, keys={self.keys!r}, "
            f"total_nbytes={self.total_nbytes})"
        )


class RetryBusyWorkerLater(WorkerMachineInstruction):
    """Send :class:`RetryBusyWorkerEvent` for ``peer`` after a short delay."""

    peer: str

    def __init__(self, peer: str) -> None:
        self.peer = peer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryBusyWorkerLater) and self.peer == other.peer

    def __repr__(self) -> str:
        return f"RetryBusyWorkerLater(peer={self.peer!r})"


class ReleaseData(WorkerMachineInstruction):
    """Drop ``key``'s value from the data store (no-op if absent)."""

    key: str

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReleaseData) and self.key == other.key

    def __repr__(self) -> str:
        return f"ReleaseData(key={self.key!r})"


class TaskFinishedMsg(WorkerMachineInstruction):
    """Tell the scheduler ``key`` is in memory here.

    ``start == stop == 0.0`` when the value did not come from an execution
    (e.g. it was already here when the scheduler asked for it).
    """

    key: str
    nbytes: int
    start: float
    stop: float

    def __init__(self, key: str, nbytes: int, start: float, stop: float) -> None:
        self.key = key
        self.nbytes = nbytes
        self.start = start
        self.stop = stop

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaskFinishedMsg)
            and self.key == other.key
            and self.nbytes == other.nbytes
            and self.start == other.start
            and self.stop == other.stop
        )

    def __repr__(self) -> str:
        return (
            f"TaskFinishedMsg(key={self.key!r}, nbytes={self.nbytes}, "
            f"start={self.start}, stop={self.stop})"
        )


class TaskErredMsg(WorkerMachineInstruction):
    """Tell the scheduler running ``key`` raised."""

    key: str
    exception: object
    traceback: object
    start: float
    stop: float

    def __init__(
        self, key: str, exception: object, traceback: object, start: float, stop: float
    ) -> None:
        self.key = key
        self.exception = exception
        self.traceback = traceback
        self.start = start
        self.stop = stop

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaskErredMsg)
            and self.key == other.key
            and self.exception == other.exception
            and self.traceback == other.traceback
            and self.start == other.start
            and self.stop == other.stop
        )

    def __repr__(self) -> str:
        return (
            f"TaskErredMsg(key={self.key!r}, exception={self.exception!r}, "
            f"start={self.start}, stop={self.stop})"
        )


class AddReplicaMsg(WorkerMachineInstruction):
    """Tell the scheduler a fetched copy of ``key`` is now held here.

    The worker keeps it until the scheduler sends FreeKeys or RemoveReplicas for
    it (the scheduler should answer with FreeKeys if it has forgotten ``key``).
    Only emitted when the machine was built with ``keep_fetched=True``.
    """

    key: str
    nbytes: int

    def __init__(self, key: str, nbytes: int) -> None:
        self.key = key
        self.nbytes = nbytes

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AddReplicaMsg)
            and self.key == other.key
            and self.nbytes == other.nbytes
        )

    def __repr__(self) -> str:
        return f"AddReplicaMsg(key={self.key!r}, nbytes={self.nbytes})"


class StealResponseMsg(WorkerMachineInstruction):
    """Answer to a StealRequest: the task's state name before the request, or None.

    The task was released here iff ``state`` is ``"waiting"`` or ``"ready"``.
    """

    key: str
    state: str | None

    def __init__(self, key: str, state: str | None) -> None:
        self.key = key
        self.state = state

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StealResponseMsg)
            and self.key == other.key
            and self.state == other.state
        )

    def __repr__(self) -> str:
        return f"StealResponseMsg(key={self.key!r}, state={self.state!r})"


class MissingDep(WorkerMachineInstruction):
    """Tell the scheduler this worker cannot find ``key``.

    ``errant_worker`` is a peer that answered it does not hold ``key`` (the
    scheduler should drop it from its holder records), or ``""`` when the worker
    ran out of holders to try (the key went to state ``missing``; that is
    reported once per transition, however it happened).  The worker waits: the
    scheduler should answer with an UpdateWhoHasEvent listing holders of
    ``key`` (possibly after recomputing it), or free the tasks here that need
    it.  An UpdateWhoHasEvent with an empty list for a key that is already
    missing here is not reported again (no ping-pong).
    """

    key: str
    errant_worker: str

    def __init__(self, key: str, errant_worker: str) -> None:
        self.key = key
        self.errant_worker = errant_worker

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MissingDep)
            and self.key == other.key
            and self.errant_worker == other.errant_worker
        )

    def __repr__(self) -> str:
        return f"MissingDep(key={self.key!r}, errant_worker={self.errant_worker!r})"

