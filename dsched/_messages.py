"""The messages of the wire protocol: msgspec Structs in one tagged union per direction.

See :mod:`dsched._protocol` for the frame layout, the handshake and the conversation
of each role; this module only defines what travels inside a frame.

Every message is an *array-like*, frozen, ``gc=False`` Struct tagged with a small
int: on the wire a message is a msgpack array ``[tag, field, field, ...]`` in the
order the fields are declared below.  Fields are only ever appended (with a
default), so an older decoder ignores trailing fields it does not know.

=====  ======================  ===========================================
tag    message                 direction
=====  ======================  ===========================================
1      Close                   any (clean goodbye, with a reason)
10-17  SubmitGraph ...         client -> scheduler
20-27  KeysInMemory ...        scheduler -> client
30-35  Compute ...             scheduler -> worker
40-48  RegisterWorker ...      worker -> scheduler
50-54  GetData ...             peer <-> peer (worker to worker, client to worker)
=====  ======================  ===========================================

Opaque payloads (a task's function and arguments, a remote exception, a stored
value) are :data:`Payload` fields: a msgpack ``bin`` on the wire.  A sender puts
``bytes`` (or a :class:`msgspec.Raw` it received, which is written verbatim); a
receiver always gets a ``msgspec.Raw``, a zero-copy view of the frame it came in.
So the scheduler forwards a task's function and arguments from a client's
``SubmitGraph`` to a worker's ``Compute`` without decoding or copying them (the
only copy is the encoder writing the outgoing frame), and never unpickles
anything.  :func:`dsched._protocol.payload_view` and
:func:`~dsched._protocol.payload_bytes` give a receiver the content.  A ``Raw``
keeps the whole frame it came in alive; ``Raw.copy()`` detaches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, TypeAlias

from msgspec import Meta, Raw, Struct

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_REASON_LENGTH",
    "AcquireReplicas",
    "Busy",
    "CancelKeys",
    "ClientError",
    "ClientToScheduler",
    "Close",
    "Compute",
    "DataReply",
    "DefineFunction",
    "Diagnostics",
    "DiagnosticsReply",
    "ForgetFunctions",
    "FreeKeys",
    "GetData",
    "GetProfile",
    "GetWorkers",
    "GraphTask",
    "Heartbeat",
    "HeartbeatAck",
    "KeyErred",
    "KeyFailed",
    "KeyLost",
    "KeysCancelled",
    "KeysInMemory",
    "LayerOptions",
    "MapLayerSpec",
    "MissingData",
    "Payload",
    "PeerMessage",
    "ProfileData",
    "PutData",
    "PutDataReply",
    "RegisterWorker",
    "ReleaseKeys",
    "ReplicasAdded",
    "RetireWorkers",
    "RetireWorkersReply",
    "Scattered",
    "SchedulerToClient",
    "SchedulerToWorker",
    "ShuffleLayerSpec",
    "StealRequest",
    "StealResponse",
    "SubmitGraph",
    "SubmitLayers",
    "TaskErred",
    "TaskFinished",
    "TreeReduceLayerSpec",
    "WantKeys",
    "WhoHas",
    "WhoHasReply",
    "WorkerInfo",
    "WorkerStatus",
    "WorkerToScheduler",
    "WorkersReply",
]

if TYPE_CHECKING:
    # What a sender may put in a payload field; a decoder always produces Raw.
    Payload: TypeAlias = bytes | Raw
else:
    # msgspec reads this at runtime: decode payloads as zero-copy views.
    Payload = Raw

NonNegInt = Annotated[int, Meta(ge=0)]
NonNegFloat = Annotated[float, Meta(ge=0.0)]  # also refuses NaN
RunId = Annotated[int, Meta(ge=-1)]  # -1: unknown
Batch = Annotated[int, Meta(ge=-1)]  # -1: unknown

# Bounds on the strings a peer names things with (keys are bounded by the
# scheduler's configurable ``Limits.max_key_length`` instead): a longer one is
# refused on decode, before it reaches a log line, a dashboard or the core.
MAX_NAME_LENGTH = 1024  # addresses, worker and layer names
MAX_REASON_LENGTH = 16_384  # a Close's reason
_MAX_LABEL_LENGTH = 256  # resource names, task states, diagnostic ops and parameter names
Name = Annotated[str, Meta(max_length=MAX_NAME_LENGTH)]
Label = Annotated[str, Meta(max_length=_MAX_LABEL_LENGTH)]
Resources = dict[Label, NonNegFloat]


class _Message(Struct, array_like=True, frozen=True, gc=False):
    """Base of every message (each subclass sets its own int ``tag``)."""


class _Record(Struct, array_like=True, frozen=True, gc=False):
    """Base of the untagged records nested inside messages."""


class Close(_Message, tag=1, frozen=True):
    """A clean goodbye; the sender closes the connection after this frame.

    From a worker it means the worker retires (its departure is expected); from a
    client, that its holds may be dropped; from the scheduler, that it shuts down.
    """

    reason: Annotated[str, Meta(max_length=MAX_REASON_LENGTH)] = ""


# --- client -> scheduler -------------------------------------------------------------


class GraphTask(_Record, frozen=True):
    """One task of a :class:`SubmitGraph`.

    ``function`` indexes the submission's ``functions`` table; ``args`` is the
    client's pickled arguments (how dependency results are substituted is between
    the client and the worker).  The rest is as ``sched_core.TaskSpec``.
    """

    key: str
    dependencies: list[str]
    function: NonNegInt
    args: Payload
    priority: int = 0
    retries: NonNegInt = 0
    workers: list[Name] | None = None
    resources: Resources | None = None
    allow_other_workers: bool = False


class SubmitGraph(_Message, tag=10, frozen=True):
    """New tasks; the client holds ``wanted``.

    A function used by many tasks is pickled once: ``functions`` is a table of
    pickled functions and each task names its function by index.  Decoding checks
    every index is within the table.
    """

    functions: list[Payload]
    tasks: list[GraphTask]
    wanted: list[str]

    def __post_init__(self) -> None:
        n = len(self.functions)
        for task in self.tasks:
            if task.function >= n:
                raise ValueError(f"task function index {task.function} is out of range ({n} functions)")

    def __repr__(self) -> str:
        return f"SubmitGraph(<{len(self.functions)} functions, {len(self.tasks)} tasks, {len(self.wanted)} wanted>)"


class MapLayerSpec(_Record, frozen=True):
    """A Map/Blockwise layer of a :class:`SubmitLayers` (see ``sched_core.MapLayer``).

    ``function`` indexes the submission's ``functions``; ``args``: one pickled
    argument tuple per partition, or None; ``inputs``: earlier layers read
    partition by partition (or broadcast, when of one partition).
    """

    name: Name
    npartitions: Annotated[int, Meta(ge=1)]
    function: NonNegInt
    args: list[Payload] | None = None
    inputs: list[Name] = []
    input_partitions: list[Annotated[int, Meta(ge=1)]] = []


class TreeReduceLayerSpec(_Record, frozen=True):
    """A tree reduction layer (see ``sched_core.TreeReduceLayer``); ``chunk`` -1: none."""

    name: Name
    input: Name
    input_partitions: Annotated[int, Meta(ge=1)]
    combine: NonNegInt
    aggregate: NonNegInt
    chunk: Annotated[int, Meta(ge=-1)] = -1
    split_every: Annotated[int, Meta(ge=2)] = 8


class ShuffleLayerSpec(_Record, frozen=True):
    """A shuffle layer (see ``sched_core.ShuffleLayer``): ``split`` then ``combine`` function indices."""

    name: Name
    input: Name
    input_partitions: Annotated[int, Meta(ge=1)]
    npartitions: Annotated[int, Meta(ge=1)]
    split: NonNegInt
    combine: NonNegInt


class LayerOptions(_Record, frozen=True):
    """Options for every task a :class:`SubmitLayers` expands to (as on ``GraphTask``)."""

    priority: int = 0
    retries: NonNegInt = 0
    workers: list[Name] | None = None
    resources: Resources | None = None
    allow_other_workers: bool = False


class SubmitLayers(_Message, tag=17, frozen=True):
    """A high-level graph expanded on the scheduler; the client holds ``wanted``.

    ``order`` lists the layers dependencies first, as ``[kind, index]`` pairs
    (kind 0: ``maps[index]``, 1: ``reductions[index]``, 2: ``shuffles[index]``).  Keys of layer outputs
    are ``"('name', i)"``; the client holds ``wanted`` and every partition of the
    ``wanted_layers`` (named, so that wanting a million partitions costs a few
    bytes).  ``options`` (priority, retries, restrictions) apply to every task.
    Decoding checks every function index and order entry.
    """

    functions: list[Payload]
    maps: list[MapLayerSpec]
    reductions: list[TreeReduceLayerSpec]
    order: list[tuple[int, int]]
    wanted: list[str]
    wanted_layers: list[Name] = []
    shuffles: list[ShuffleLayerSpec] = []
    options: LayerOptions | None = None

    def __post_init__(self) -> None:
        n = len(self.functions)
        for m in self.maps:
            if m.function >= n:
                raise ValueError(f"layer {m.name!r}: function index {m.function} is out of range ({n} functions)")
        for r in self.reductions:
            if max(r.combine, r.aggregate, r.chunk) >= n:
                raise ValueError(f"layer {r.name!r}: a function index is out of range ({n} functions)")
        for sh in self.shuffles:
            if max(sh.split, sh.combine) >= n:
                raise ValueError(f"layer {sh.name!r}: a function index is out of range ({n} functions)")
        sizes = (len(self.maps), len(self.reductions), len(self.shuffles))
        for kind, index in self.order:
            size = sizes[kind] if 0 <= kind < 3 else -1
            if not 0 <= index < size:
                raise ValueError(f"layer order entry [{kind}, {index}] refers to no layer")
        if len(self.order) != sum(sizes) or len(set(self.order)) != len(self.order):
            raise ValueError("every layer must appear in order exactly once")

    def __repr__(self) -> str:
        return f"SubmitLayers(<{len(self.order)} layers, {len(self.wanted)} wanted>)"


class Diagnostics(_Message, tag=18, frozen=True):
    """Ask the scheduler for a diagnostic (``op``: "profile", "profile-server", "capture",
    "record", "status", ...); answered by :class:`DiagnosticsReply` with the same ``request``."""

    request: int
    op: Label
    # Values may list workers ("workers": comma-separated addresses), hence the larger bound.
    params: dict[Label, Annotated[str, Meta(max_length=MAX_REASON_LENGTH)] | float | bool | None] = {}


class WantKeys(_Message, tag=11, frozen=True):
    """Take a hold on known keys (futures created)."""

    keys: list[str]


class ReleaseKeys(_Message, tag=12, frozen=True):
    """Drop holds (futures garbage collected)."""

    keys: list[str]


class CancelKeys(_Message, tag=13, frozen=True):
    """Drop holds and be told so; ``force`` drops every client's hold."""

    keys: list[str]
    force: bool = False


class Scattered(_Message, tag=14, frozen=True):
    """The client placed data on ``workers`` (with :class:`PutData`); it holds the keys."""

    workers: list[Name]
    nbytes: dict[str, NonNegInt]


class WhoHas(_Message, tag=15, frozen=True):
    """Where are these keys (for gather)?  Answered by :class:`WhoHasReply`."""

    request: int
    keys: list[str]


class GetWorkers(_Message, tag=16, frozen=True):
    """Which workers are there (for scatter)?  Answered by :class:`WorkersReply`."""

    request: int


class RetireWorkers(_Message, tag=19, frozen=True):
    """Retire these workers (addresses or names) gracefully: their only copies move first.

    Answered by :class:`RetireWorkersReply` once they are gone, or after
    ``timeout`` seconds (they are closed then in any case).
    """

    request: int
    workers: list[Name]
    timeout: NonNegFloat = 60.0


# --- scheduler -> client -------------------------------------------------------------


class KeysInMemory(_Message, tag=20, frozen=True):
    """These held keys are computed (their futures are done)."""

    keys: list[str]


class KeyErred(_Message, tag=21, frozen=True):
    """A held key erred because ``blamed_key`` (itself or a dependency) raised.

    ``exception`` is what the worker pickled; ``traceback`` its formatted traceback.
    """

    key: str
    blamed_key: str
    exception: Payload
    traceback: str


class KeyFailed(_Message, tag=22, frozen=True):
    """The scheduler itself gave up on a held key (``sched_core.SchedulerError``).

    ``kind`` is "killed-worker", "lost-data" or "no-worker".
    """

    key: str
    blamed_key: str
    kind: str
    message: str


class KeyLost(_Message, tag=23, frozen=True):
    """Scattered data was lost with the last worker holding it."""

    key: str


class KeysCancelled(_Message, tag=24, frozen=True):
    keys: list[str]


class ClientError(_Message, tag=25, frozen=True):
    """A request was refused and changed nothing (``kind``: "cycle", "unknown-key", ...)."""

    kind: str
    message: str
    keys: list[str]


class WhoHasReply(_Message, tag=26, frozen=True):
    """Answer to :class:`WhoHas`: holders of each known key in memory."""

    request: int
    who_has: dict[str, list[str]]


class DiagnosticsReply(_Message, tag=28, frozen=True):
    """Answer to :class:`Diagnostics`: ``payload`` (JSON, or a file's bytes), or ``error``."""

    request: int
    payload: bytes = b""
    error: str = ""


class WorkerInfo(_Record, frozen=True):
    address: str
    name: str
    nthreads: int
    memory_limit: int = 0
    resources: dict[str, NonNegFloat] = {}


class WorkersReply(_Message, tag=27, frozen=True):
    """Answer to :class:`GetWorkers`."""

    request: int
    workers: list[WorkerInfo]


class RetireWorkersReply(_Message, tag=29, frozen=True):
    """Answer to :class:`RetireWorkers`: the addresses of the workers retired (and gone)."""

    request: int
    retired: list[str]


# --- scheduler -> worker -------------------------------------------------------------


class Compute(_Message, tag=30, frozen=True):
    """Run ``key``: ``sched_core.ComputeTask`` on the wire.

    ``function`` refers to a :class:`DefineFunction` sent earlier on the same
    connection (or earlier in the same frame), so a function shared by many tasks
    crosses the wire once per worker.  The worker echoes ``run_id`` in its report.

    ``call`` says how to call the function: 0, ``function(*args, **kwargs)``
    from the pickled ``(args, kwargs)`` (dependencies inside as references
    the worker fills in); 1 (a layer's APPLY), ``function(*values of keys, *args)``; 2 (a layer's
    REDUCE), ``function([values of keys])``; 3 (a shuffle's PIECES),
    ``function([value[index] for the values of keys])``; ``keys`` lists the
    dependencies in call order for 1, 2 and 3.
    """

    key: str
    function: NonNegInt
    args: Payload
    priority: int
    run_id: RunId
    who_has: dict[str, list[str]] = {}
    nbytes: dict[str, NonNegInt] = {}
    resources: dict[str, NonNegFloat] | None = None
    call: Annotated[int, Meta(ge=0, le=3)] = 0
    keys: list[str] = []
    index: NonNegInt = 0


class DefineFunction(_Message, tag=31, frozen=True):
    """A pickled function that later :class:`Compute` messages refer to by ``ref``."""

    ref: NonNegInt
    function: Payload


class ForgetFunctions(_Message, tag=32, frozen=True):
    """No pending or future :class:`Compute` on this connection uses these refs."""

    refs: list[int]


class FreeKeys(_Message, tag=33, frozen=True):
    """Drop these keys: release their data, cancel them if running."""

    keys: list[str]


class StealRequest(_Message, tag=34, frozen=True):
    """Give ``key`` up if it has not started; answer with :class:`StealResponse`."""

    key: str
    run_id: RunId


class AcquireReplicas(_Message, tag=37, frozen=True):
    """Fetch copies of these keys from the workers listed and keep them (a retiring worker's results).

    ``sched_core.AcquireReplicas`` on the wire; the worker reports what it
    stored with :class:`ReplicasAdded`.
    """

    who_has: dict[str, list[str]]
    nbytes: dict[str, NonNegInt] = {}


class GetProfile(_Message, tag=36, frozen=True):
    """Send the sampled profile of the window [start, stop] (None: open), labels starting with
    ``prefix`` (None: all); answered by :class:`ProfileData` with the same ``request``."""

    request: int
    start: float | None = None
    stop: float | None = None
    prefix: str | None = None


class HeartbeatAck(_Message, tag=35, frozen=True):
    """Answer to :class:`Heartbeat` ``seq`` (the worker times the round trip).

    ``interval``: seconds until the next heartbeat (scaled with the cluster size).
    """

    seq: int
    interval: NonNegFloat


# --- worker -> scheduler -------------------------------------------------------------


class RegisterWorker(_Message, tag=40, frozen=True):
    """First message of a worker: ``address`` is where it serves data to peers."""

    address: Name
    nthreads: Annotated[int, Meta(ge=1)]
    memory_limit: NonNegInt = 0
    resources: Resources = {}
    name: Name = ""


class TaskFinished(_Message, tag=41, frozen=True):
    """``key`` is in memory here; ``duration`` in seconds, ``run_id`` echoed from Compute;
    ``start``: when it started, in the worker's wall-clock seconds (for the task stream)."""

    key: str
    nbytes: NonNegInt
    duration: NonNegFloat
    run_id: RunId
    start: NonNegFloat = 0.0


class TaskErred(_Message, tag=42, frozen=True):
    """The task raised; ``exception`` pickled by the worker, opaque to the scheduler."""

    key: str
    exception: Payload
    traceback: str
    run_id: RunId
    start: NonNegFloat = 0.0
    duration: NonNegFloat = 0.0


class ReplicasAdded(_Message, tag=43, frozen=True):
    """This worker now also holds ``keys`` (fetched dependencies).

    ``seen_batch``: the latest scheduler batch carried out when this was sent.
    """

    keys: list[str]
    nbytes: dict[str, NonNegInt]
    seen_batch: Batch


class MissingData(_Message, tag=44, frozen=True):
    """``key`` could not be found; ``errant_worker`` ("" if none) said it lacks it."""

    key: str
    errant_worker: Name
    seen_batch: Batch


class StealResponse(_Message, tag=45, frozen=True):
    """Answer to :class:`StealRequest`: the task's state here before it, or None."""

    key: str
    state: Label | None
    run_id: RunId


class ProfileData(_Message, tag=47, frozen=True):
    """Answer to :class:`GetProfile`: a profile tree, JSON-encoded (checked by the scheduler)."""

    request: int
    tree: bytes


class Heartbeat(_Message, tag=46, frozen=True):
    """Periodic news; answered by :class:`HeartbeatAck` with the same ``seq``.

    ``latency``: the last measured round trip in seconds; ``memory``: process
    memory in bytes; then task counts and the bytes of stored results.
    """

    seq: int
    latency: NonNegFloat
    memory: NonNegInt
    executing: NonNegInt = 0
    ready: NonNegInt = 0
    in_memory: NonNegInt = 0
    nbytes_in_memory: NonNegInt = 0
    cpu: NonNegFloat | None = None  # percent of one core since the last heartbeat
    managed_bytes: NonNegInt = 0  # results' bytes (as estimated) in memory ...
    spilled_bytes: NonNegInt = 0  # ... and spilled to disk


class WorkerStatus(_Message, tag=48, frozen=True):
    """The worker paused (memory past its pause threshold: it starts no new task) or runs again."""

    paused: bool


# --- peer <-> peer -------------------------------------------------------------------


class GetData(_Message, tag=50, frozen=True):
    """Send me these keys; answered by :class:`DataReply` or :class:`Busy`."""

    request: int
    keys: list[str]


class DataReply(_Message, tag=51, frozen=True):
    """The pickled values of the requested keys held here; ``missing``: those not held."""

    request: int
    data: dict[str, Payload]
    missing: list[str] = []


class Busy(_Message, tag=52, frozen=True):
    """Too busy to serve ``request`` now: try again later or elsewhere."""

    request: int


class PutData(_Message, tag=53, frozen=True):
    """Store these pickled values (scatter); answered by :class:`PutDataReply`."""

    request: int
    data: dict[str, Payload]


class PutDataReply(_Message, tag=54, frozen=True):
    """The values of ``request`` are stored; their sizes as accounted here."""

    request: int
    nbytes: dict[str, NonNegInt]


# --- one union per direction ---------------------------------------------------------

ClientToScheduler: TypeAlias = (
    SubmitGraph
    | SubmitLayers
    | WantKeys
    | ReleaseKeys
    | CancelKeys
    | Scattered
    | WhoHas
    | GetWorkers
    | RetireWorkers
    | Diagnostics
    | Close
)
SchedulerToClient: TypeAlias = (
    KeysInMemory
    | KeyErred
    | KeyFailed
    | KeyLost
    | KeysCancelled
    | ClientError
    | WhoHasReply
    | WorkersReply
    | RetireWorkersReply
    | DiagnosticsReply
    | Close
)
SchedulerToWorker: TypeAlias = (
    Compute | DefineFunction | ForgetFunctions | FreeKeys | StealRequest | HeartbeatAck | GetProfile
    | AcquireReplicas | Close
)
WorkerToScheduler: TypeAlias = (
    RegisterWorker
    | TaskFinished
    | TaskErred
    | ReplicasAdded
    | MissingData
    | StealResponse
    | Heartbeat
    | ProfileData
    | WorkerStatus
    | Close
)
PeerMessage: TypeAlias = GetData | DataReply | Busy | PutData | PutDataReply | Close
