"""Events the scheduler core consumes.

Each event is a plain native class holding already-decoded values.  The runtime
translates wire messages into these and feeds them, in batches, to
:meth:`sched_core.SchedulerState.handle_events`.  Payloads the scheduler must
not look inside (a task's function and arguments, a remote exception) are typed
``object`` and passed through untouched.
"""

from __future__ import annotations


class SchedulerEvent:
    """Base class of every event the scheduler core accepts."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class TaskSpec:
    """One task of a submitted graph.

    ``run_spec`` is opaque to the core (the runtime passes bytes); two specs for
    the same key are the same definition when their ``run_spec`` values compare
    equal and their dependencies are the same keys.  ``run_spec`` is ``None``
    only for data that was scattered, never for a task.
    """

    key: str
    dependencies: list[str]
    run_spec: object
    priority: int
    retries: int
    workers: list[str] | None
    resources: dict[str, float] | None
    allow_other_workers: bool

    def __init__(
        self,
        key: str,
        dependencies: list[str],
        run_spec: object,
        priority: int = 0,
        retries: int = 0,
        workers: list[str] | None = None,
        resources: dict[str, float] | None = None,
        allow_other_workers: bool = False,
    ) -> None:
        self.key = key
        self.dependencies = dependencies
        self.run_spec = run_spec
        self.priority = priority
        self.retries = retries
        self.workers = workers
        self.resources = resources
        self.allow_other_workers = allow_other_workers

    def __repr__(self) -> str:
        return f"<TaskSpec {self.key!r} deps={len(self.dependencies)}>"


class GraphSubmitted(SchedulerEvent):
    """A client submits tasks and names the keys it wants (holds futures to).

    The submission is validated as a whole: on any error nothing changes and
    the client is told why.
    """

    client: str
    tasks: list[TaskSpec]
    wanted: list[str]

    def __init__(self, client: str, tasks: list[TaskSpec], wanted: list[str]) -> None:
        self.client = client
        self.tasks = tasks
        self.wanted = wanted

    def __repr__(self) -> str:
        return f"<GraphSubmitted client={self.client!r} tasks={len(self.tasks)} wanted={len(self.wanted)}>"


class ClientAdded(SchedulerEvent):
    client: str

    def __init__(self, client: str) -> None:
        self.client = client


class ClientRemoved(SchedulerEvent):
    """A client disconnected: everything it wanted is released."""

    client: str

    def __init__(self, client: str) -> None:
        self.client = client


class ClientWantsKeys(SchedulerEvent):
    """A client takes a hold on keys the scheduler already knows."""

    client: str
    keys: list[str]

    def __init__(self, client: str, keys: list[str]) -> None:
        self.client = client
        self.keys = keys


class ClientReleasesKeys(SchedulerEvent):
    """A client drops its hold on keys (its futures were garbage collected)."""

    client: str
    keys: list[str]

    def __init__(self, client: str, keys: list[str]) -> None:
        self.client = client
        self.keys = keys


class CancelKeys(SchedulerEvent):
    """A client cancels keys: its hold is dropped and it is told they were cancelled.

    With ``force`` every client's hold on those keys is dropped.
    """

    client: str
    keys: list[str]
    force: bool

    def __init__(self, client: str, keys: list[str], force: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.force = force


class KeysScattered(SchedulerEvent):
    """A client placed data directly on workers; the client holds the keys."""

    client: str
    workers: list[str]
    nbytes: dict[str, int]

    def __init__(self, client: str, workers: list[str], nbytes: dict[str, int]) -> None:
        self.client = client
        self.workers = workers
        self.nbytes = nbytes


class WorkerAdded(SchedulerEvent):
    address: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float]
    name: str

    def __init__(
        self,
        address: str,
        nthreads: int,
        memory_limit: int = 0,
        resources: dict[str, float] | None = None,
        name: str = "",
    ) -> None:
        self.address = address
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = resources if resources is not None else {}
        self.name = name if name else address

    def __repr__(self) -> str:
        return f"<WorkerAdded {self.address!r} nthreads={self.nthreads}>"


class WorkerRemoved(SchedulerEvent):
    """A worker is gone.

    ``expected`` is true for a clean retirement; when false (lost connection,
    missed heartbeats) the tasks it was running are suspected of killing it.
    """

    address: str
    expected: bool

    def __init__(self, address: str, expected: bool = False) -> None:
        self.address = address
        self.expected = expected


class RetireWorker(SchedulerEvent):
    """Retire a worker gracefully (a client asked, or the worker is closing).

    It is given no new task and what it was to run goes elsewhere; results only
    it holds are copied to other workers first; then the core emits
    :class:`~sched_core.CloseWorker` for it.  Its removal follows as
    ``WorkerRemoved(expected=True)`` once its connection ends.
    """

    address: str

    def __init__(self, address: str) -> None:
        self.address = address

    def __repr__(self) -> str:
        return f"<RetireWorker {self.address!r}>"


class WorkerHeartbeat(SchedulerEvent):
    """Periodic news from a worker; ``latency`` is its measured round trip in seconds."""

    address: str
    latency: float
    memory: int

    def __init__(self, address: str, latency: float, memory: int = 0) -> None:
        self.address = address
        self.latency = latency
        self.memory = memory


class WorkerStatusChanged(SchedulerEvent):
    """A worker paused (its memory is past its pause threshold) or resumed.

    A paused worker keeps its data and finishes what it is running, but is given
    no new task until it resumes; tasks it has not started may be stolen.
    """

    address: str
    paused: bool

    def __init__(self, address: str, paused: bool) -> None:
        self.address = address
        self.paused = paused

    def __repr__(self) -> str:
        return f"<WorkerStatusChanged {self.address!r} {'paused' if self.paused else 'running'}>"


class TaskFinished(SchedulerEvent):
    """A worker finished a task.

    ``run_id`` echoes the :class:`ComputeTask` that started this run, so a
    report that crossed a "free" or a reassignment on the wire is recognised
    as stale.  The runtime always sets it; -1 (unknown) accepts the report
    only from the worker the task is currently assigned to.
    """

    worker: str
    key: str
    nbytes: int
    duration: float
    run_id: int

    def __init__(self, worker: str, key: str, nbytes: int, duration: float, run_id: int = -1) -> None:
        self.worker = worker
        self.key = key
        self.nbytes = nbytes
        self.duration = duration
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<TaskFinished {self.key!r} on {self.worker!r}>"


class TaskErred(SchedulerEvent):
    """A task raised; ``exception`` and ``traceback`` are opaque payloads.

    ``run_id`` is as for :class:`TaskFinished`.
    """

    worker: str
    key: str
    exception: object
    traceback: object
    run_id: int

    def __init__(self, worker: str, key: str, exception: object, traceback: object, run_id: int = -1) -> None:
        self.worker = worker
        self.key = key
        self.exception = exception
        self.traceback = traceback
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<TaskErred {self.key!r} on {self.worker!r}>"


class ReplicasAdded(SchedulerEvent):
    """A worker now also holds these keys (it fetched them as dependencies).

    ``nbytes`` gives their sizes when the worker knows them.  ``seen_batch`` is
    the latest scheduler batch (``SchedulerState.batch``) whose instructions the
    worker had carried out when it sent this; a report that crossed a "free" of
    the key is then recognised.  -1 means unknown: the report is trusted.
    """

    worker: str
    keys: list[str]
    nbytes: dict[str, int] | None
    seen_batch: int

    def __init__(
        self, worker: str, keys: list[str], nbytes: dict[str, int] | None = None, seen_batch: int = -1
    ) -> None:
        self.worker = worker
        self.keys = keys
        self.nbytes = nbytes
        self.seen_batch = seen_batch


class MissingData(SchedulerEvent):
    """``worker`` could not get ``key`` from ``errant_worker``, which should have had it.

    ``seen_batch`` is as for :class:`ReplicasAdded`: a report older than the
    latest copy of the key does not condemn that copy.
    """

    worker: str
    key: str
    errant_worker: str
    seen_batch: int

    def __init__(self, worker: str, key: str, errant_worker: str, seen_batch: int = -1) -> None:
        self.worker = worker
        self.key = key
        self.errant_worker = errant_worker
        self.seen_batch = seen_batch


class StealResponse(SchedulerEvent):
    """A worker's answer to a steal request: the task's state there, or None if unknown.

    ``run_id`` echoes the request's, so that the answer to an earlier request
    (about an earlier run of the key) is not taken for the answer to a later
    one; -1 (unknown) is taken as an answer about the current run.
    """

    worker: str
    key: str
    state: str | None
    run_id: int

    def __init__(self, worker: str, key: str, state: str | None, run_id: int = -1) -> None:
        self.worker = worker
        self.key = key
        self.state = state
        self.run_id = run_id


class Tick(SchedulerEvent):
    """The runtime's periodic wake-up (a few times a second): balance load by stealing."""
