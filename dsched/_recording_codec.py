"""Core events to msgpack-encodable data and back, and a digest of the core's decisions.

Used by :mod:`dsched._recording` (writing a scheduler's event stream) and
:mod:`dsched._replay` (feeding it back).  Three parts:

* Opaque values (a task's ``run_spec``, a remote exception and its traceback)
  are encoded as *tagged* data, because the core compares them by value (a key
  resubmitted with a different ``run_spec`` is refused) and plain msgpack would
  blur the difference between a tuple and a list, or bytes and ``msgspec.Raw``.
  With ``keep_payloads=False`` every bytes/Raw payload (and a task's
  traceback text) is replaced by a :class:`DroppedPayload` holding its type,
  length and a digest: equality is kept, the bytes are not.
* Events: one row per event, ``[class name, field, ...]`` in constructor
  order, driven by :data:`EVENT_FIELDS`, which must name every event class of
  ``sched_core._events`` and each of its fields (tests check this against the
  source, so a new event or field cannot be forgotten).
* Instructions are never decoded, only summarised: :func:`instruction_rows`
  gives a canonical row per instruction (payloads reduced to their type and
  length, so a recording without payloads digests the same way) and
  :func:`decisions_digest` hashes them.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

import sched_core as sc

__all__ = [
    "EVENT_FIELDS",
    "INSTRUCTION_FIELDS",
    "CodecError",
    "DroppedPayload",
    "brief_rows",
    "decisions_digest",
    "decode_events",
    "decode_opaque",
    "digest_and_brief",
    "encode_events",
    "encode_opaque",
    "instruction_rows",
]


class CodecError(ValueError):
    """A value cannot be recorded, or recorded data does not decode to events."""


class DroppedPayload:
    """Stands for a payload left out of a recording: equal to another exactly when the originals were.

    ``kind`` is the original's type ("bytes", "Raw" or "str"), ``length`` its
    size and ``digest`` a BLAKE2b digest of its content.  The core never looks
    inside a payload, it only compares them; so a replay with these in place of
    the originals takes the same decisions.
    """

    __slots__ = ("digest", "kind", "length")

    def __init__(self, kind: str, length: int, digest: bytes) -> None:
        self.kind = kind
        self.length = length
        self.digest = digest

    @classmethod
    def of(cls, value: bytes | msgspec.Raw | str) -> DroppedPayload:
        if isinstance(value, str):
            content = value.encode("utf-8", "surrogatepass")
            return cls("str", len(value), hashlib.blake2b(content, digest_size=16).digest())
        kind = "Raw" if isinstance(value, msgspec.Raw) else "bytes"
        view = memoryview(value)
        return cls(kind, view.nbytes, hashlib.blake2b(view, digest_size=16).digest())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DroppedPayload)
            and other.digest == self.digest
            and other.kind == self.kind
            and other.length == self.length
        )

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"<dropped {self.kind} payload, length {self.length}>"


# -- opaque values -------------------------------------------------------------------
#
# Scalars (None, bool, int within 64 bits, float, str, bytes) are written as
# themselves; everything else as an array whose first element is a tag.  An
# array is therefore always tagged, which is how lists and tuples stay apart.

_LIST: Final = 0
_TUPLE: Final = 1
_DICT: Final = 2
_RAW: Final = 3
_BIG_INT: Final = 4
_LAYER_CALL: Final = 5
_DROPPED: Final = 6
_SCHEDULER_ERROR: Final = 7

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_SCALARS: Final = (str, float, bool)


def encode_opaque(value: object, keep_payloads: bool = True) -> Any:
    """``value`` as msgpack-encodable data that :func:`decode_opaque` turns back into an equal value."""
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is int:
        return value if _INT_MIN <= value <= _INT_MAX else [_BIG_INT, str(value)]
    if isinstance(value, bytes):
        return value if keep_payloads else _dropped(DroppedPayload.of(value))
    if isinstance(value, msgspec.Raw):
        return [_RAW, memoryview(value)] if keep_payloads else _dropped(DroppedPayload.of(value))
    if isinstance(value, tuple):
        return [_TUPLE, *[encode_opaque(item, keep_payloads) for item in value]]
    if isinstance(value, list):
        return [_LIST, *[encode_opaque(item, keep_payloads) for item in value]]
    if isinstance(value, dict):
        pairs = [[encode_opaque(k, keep_payloads), encode_opaque(v, keep_payloads)] for k, v in value.items()]
        return [_DICT, *pairs]
    if isinstance(value, sc.LayerCall):
        return [
            _LAYER_CALL,
            value.kind,
            encode_opaque(value.function, keep_payloads),
            encode_opaque(value.args, keep_payloads),
            list(value.keys),
            value.index,
        ]
    if isinstance(value, DroppedPayload):
        return _dropped(value)
    if isinstance(value, sc.SchedulerError):
        return [_SCHEDULER_ERROR, value.kind, value.message]
    raise CodecError(f"cannot record an opaque value of type {type(value).__qualname__}")


def _dropped(payload: DroppedPayload) -> list[Any]:
    return [_DROPPED, payload.kind, payload.length, payload.digest]


def decode_opaque(data: Any) -> object:
    """The value :func:`encode_opaque` encoded (a :class:`DroppedPayload` for a dropped payload)."""
    if type(data) is not list:
        return data
    if not data:
        raise CodecError("an opaque value is an empty array")
    tag = data[0]
    if tag == _TUPLE:
        return tuple(decode_opaque(item) for item in data[1:])
    if tag == _LIST:
        return [decode_opaque(item) for item in data[1:]]
    try:
        if tag == _RAW:
            return msgspec.Raw(bytes(data[1]))
        if tag == _DICT:
            return {decode_opaque(k): decode_opaque(v) for k, v in data[1:]}
        if tag == _BIG_INT:
            return int(data[1])
        if tag == _LAYER_CALL:
            _, kind, function, args, keys, index = data
            return sc.LayerCall(kind, decode_opaque(function), decode_opaque(args), keys, index)
        if tag == _DROPPED:
            _, kind, length, digest = data
            return DroppedPayload(kind, length, digest)
        if tag == _SCHEDULER_ERROR:
            return sc.SchedulerError(data[1], data[2])
    except (TypeError, ValueError) as exc:
        raise CodecError(f"malformed opaque value with tag {tag!r}: {exc}") from None
    raise CodecError(f"unknown opaque value tag {tag!r}")


# -- events --------------------------------------------------------------------------

# Field kinds: a plain value (str, number, bool, list of str, dict of str to a
# number, or None), an opaque value, an int that may exceed 64 bits (a user
# priority), a payload-like opaque value dropped with the payloads (a traceback),
# or the list of TaskSpecs of a submission.
PLAIN: Final = "plain"
OPAQUE: Final = "opaque"
BIG_INT: Final = "int"
TEXT_PAYLOAD: Final = "text"
SPECS: Final = "specs"

EVENT_FIELDS: Final[dict[type, tuple[tuple[str, str], ...]]] = {
    sc.TaskSpec: (
        ("key", PLAIN),
        ("dependencies", PLAIN),
        ("run_spec", OPAQUE),
        ("priority", BIG_INT),
        ("retries", PLAIN),
        ("workers", PLAIN),
        ("resources", PLAIN),
        ("allow_other_workers", PLAIN),
    ),
    sc.GraphSubmitted: (("client", PLAIN), ("tasks", SPECS), ("wanted", PLAIN)),
    sc.ClientAdded: (("client", PLAIN),),
    sc.ClientRemoved: (("client", PLAIN),),
    sc.ClientWantsKeys: (("client", PLAIN), ("keys", PLAIN)),
    sc.ClientReleasesKeys: (("client", PLAIN), ("keys", PLAIN)),
    sc.CancelKeys: (("client", PLAIN), ("keys", PLAIN), ("force", PLAIN)),
    sc.KeysScattered: (("client", PLAIN), ("workers", PLAIN), ("nbytes", PLAIN)),
    sc.WorkerAdded: (
        ("address", PLAIN),
        ("nthreads", PLAIN),
        ("memory_limit", PLAIN),
        ("resources", PLAIN),
        ("name", PLAIN),
    ),
    sc.WorkerRemoved: (("address", PLAIN), ("expected", PLAIN)),
    sc.WorkerHeartbeat: (("address", PLAIN), ("latency", PLAIN), ("memory", PLAIN)),
    sc.WorkerStatusChanged: (("address", PLAIN), ("paused", PLAIN)),
    sc.RetireWorker: (("address", PLAIN),),
    sc.TaskFinished: (("worker", PLAIN), ("key", PLAIN), ("nbytes", PLAIN), ("duration", PLAIN), ("run_id", PLAIN)),
    sc.TaskErred: (
        ("worker", PLAIN),
        ("key", PLAIN),
        ("exception", OPAQUE),
        ("traceback", TEXT_PAYLOAD),
        ("run_id", PLAIN),
    ),
    sc.ReplicasAdded: (("worker", PLAIN), ("keys", PLAIN), ("nbytes", PLAIN), ("seen_batch", PLAIN)),
    sc.MissingData: (("worker", PLAIN), ("key", PLAIN), ("errant_worker", PLAIN), ("seen_batch", PLAIN)),
    sc.StealResponse: (("worker", PLAIN), ("key", PLAIN), ("state", PLAIN), ("run_id", PLAIN)),
    sc.Tick: (),
}
"""Every event class (and ``TaskSpec``) with its fields in constructor order and how each is encoded."""

_BY_NAME: Final[dict[str, type]] = {cls.__name__: cls for cls in EVENT_FIELDS}


class _Layout:
    """How one class is read and written: its fields fetched at once, the non-plain ones listed."""

    __slots__ = ("cls", "get", "name", "size", "special")

    def __init__(self, cls: type, fields: tuple[tuple[str, str], ...]) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.size = len(fields)
        names = [name for name, _ in fields]
        # attrgetter fetches every field in one C call (a bare value when there is one).
        getter = operator.attrgetter(*names) if len(names) > 1 else None
        single = names[0] if len(names) == 1 else ""
        self.get: Callable[[object], tuple[Any, ...]] = (
            getter if getter is not None else (lambda obj: (getattr(obj, single),)) if single else (lambda obj: ())
        )
        self.special = [(i, kind) for i, (_, kind) in enumerate(fields) if kind != PLAIN]


_LAYOUTS: Final[dict[type, _Layout]] = {cls: _Layout(cls, fields) for cls, fields in EVENT_FIELDS.items()}
_SPEC_LAYOUT: Final = _LAYOUTS[sc.TaskSpec]


def _encode_run_spec(run_spec: object, keep_payloads: bool) -> Any:
    # The runtime's run_spec, (function ref, Raw arguments), without the general walk.
    if keep_payloads and type(run_spec) is tuple and len(run_spec) == 2:
        ref, args = run_spec
        if type(args) is msgspec.Raw and type(ref) is int and 0 <= ref <= _INT_MAX:
            return [_TUPLE, ref, [_RAW, memoryview(args)]]
    return encode_opaque(run_spec, keep_payloads)


def _encode_specs(specs: object, keep_payloads: bool) -> list[Any]:
    if type(specs) is not list:
        raise CodecError(f"a submission's tasks are a {type(specs).__name__}, not a list")
    get = _SPEC_LAYOUT.get
    rows: list[Any] = []
    for spec in specs:
        if type(spec) is not sc.TaskSpec:
            raise CodecError(f"a submission holds {type(spec).__name__}, not TaskSpec")
        key, deps, run_spec, priority, retries, workers, resources, allow = get(spec)
        if not _INT_MIN <= priority <= _INT_MAX:
            priority = [_BIG_INT, str(priority)]
        run_spec = _encode_run_spec(run_spec, keep_payloads)
        rows.append(["TaskSpec", key, deps, run_spec, priority, retries, workers, resources, allow])
    return rows


def _encode_field(value: object, kind: str, keep_payloads: bool) -> Any:
    if kind == SPECS:
        return _encode_specs(value, keep_payloads)
    if kind == TEXT_PAYLOAD and not keep_payloads and isinstance(value, str):
        return _dropped(DroppedPayload.of(value))
    return encode_opaque(value, keep_payloads)


def encode_events(events: Sequence[sc.SchedulerEvent], keep_payloads: bool = True) -> list[Any]:
    """Rows for ``events``, ready for msgpack: ``[class name, field, ...]`` each."""
    rows: list[Any] = []
    for event in events:
        layout = _LAYOUTS.get(type(event))
        if layout is None or layout.cls is sc.TaskSpec:
            raise CodecError(f"no codec for {type(event).__qualname__}: add it to dsched._recording_codec.EVENT_FIELDS")
        row = [layout.name, *layout.get(event)]
        for i, kind in layout.special:
            row[i + 1] = _encode_field(row[i + 1], kind, keep_payloads)
        rows.append(row)
    return rows


def _decode_specs(rows: Any) -> list[sc.TaskSpec]:
    if type(rows) is not list:
        raise CodecError("a submission's tasks are not an array")
    specs: list[sc.TaskSpec] = []
    TaskSpec = sc.TaskSpec
    for row in rows:
        if type(row) is not list or len(row) != 9 or row[0] != "TaskSpec":
            name = row[0] if type(row) is list and row else type(row).__name__
            raise CodecError(f"a submission holds {name}, not TaskSpec")
        priority = row[4]
        if type(priority) is list:
            priority = decode_opaque(priority)
        try:
            specs.append(TaskSpec(row[1], row[2], decode_opaque(row[3]), priority, row[5], row[6], row[7], row[8]))
        except TypeError as exc:  # a compiled class checks its argument types
            raise CodecError(f"TaskSpec: {exc}") from None
    return specs


def _decode_event(row: Any) -> sc.SchedulerEvent:
    if type(row) is not list or not row or type(row[0]) is not str:
        raise CodecError(f"an event row must be [class name, fields...], not {type(row).__name__}")
    cls = _BY_NAME.get(row[0])
    if cls is None:
        raise CodecError(f"unknown event class {row[0]!r} (recorded by a newer dsched?)")
    layout = _LAYOUTS[cls]
    if len(row) != layout.size + 1:
        raise CodecError(f"{row[0]} has {len(row) - 1} fields in the recording, {layout.size} here")
    args = row[1:]
    for i, kind in layout.special:
        args[i] = _decode_specs(args[i]) if kind == SPECS else decode_opaque(args[i])
    try:
        event = cls(*args)
    except TypeError as exc:  # a compiled class checks its argument types
        raise CodecError(f"{row[0]}: {exc}") from None
    if not isinstance(event, sc.SchedulerEvent):
        raise CodecError(f"{row[0]} is not a scheduler event")
    return event


def decode_events(rows: Any) -> list[sc.SchedulerEvent]:
    """The events that :func:`encode_events` encoded."""
    if type(rows) is not list:
        raise CodecError("a batch's events are not an array")
    return [_decode_event(row) for row in rows]


# -- instructions --------------------------------------------------------------------

# (field, shaped, brief): shaped fields are opaque (reduced to type and length);
# brief fields are kept in the short form stored per batch to show a divergence.
INSTRUCTION_FIELDS: Final[dict[type, tuple[tuple[str, bool, bool], ...]]] = {
    sc.ComputeTask: (
        ("worker", False, True),
        ("key", False, True),
        ("run_id", False, True),
        ("priority", True, False),
        ("who_has", False, False),
        ("nbytes", False, False),
        ("resources", False, False),
        ("run_spec", True, False),
    ),
    sc.FreeKeys: (("worker", False, True), ("keys", False, True)),
    sc.StealRequest: (("worker", False, True), ("key", False, True), ("run_id", False, True)),
    sc.AcquireReplicas: (("worker", False, True), ("who_has", False, True), ("nbytes", False, False)),
    sc.CloseWorker: (("worker", False, True), ("reason", False, False)),
    sc.ClientKeysInMemory: (("client", False, True), ("keys", False, True)),
    sc.ClientKeyErred: (
        ("client", False, True),
        ("key", False, True),
        ("blamed_key", False, True),
        ("exception", True, False),
        ("traceback", True, False),
    ),
    sc.ClientKeyLost: (("client", False, True), ("key", False, True)),
    sc.ClientKeysCancelled: (("client", False, True), ("keys", False, True)),
    sc.ClientError: (("client", False, True), ("kind", False, True), ("message", False, False), ("keys", False, True)),
}
"""Every concrete instruction class with its fields: what the digest of a batch's decisions covers."""


def _shape(value: object) -> Any:
    """An opaque value reduced to what survives dropping payloads: types, lengths, small scalars."""
    if type(value) is tuple and len(value) == 2:  # the runtime's (function ref, Raw arguments), quickly
        ref, args = value
        if type(args) is msgspec.Raw and type(ref) is int and 0 <= ref <= _INT_MAX:
            return ["tuple", [ref, ["Raw", len(args)]]]
    if value is None or type(value) is bool or type(value) is float:
        return value
    if type(value) is int:
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, (bytes, msgspec.Raw)):
        return ["Raw" if isinstance(value, msgspec.Raw) else "bytes", len(value)]
    if isinstance(value, str):
        return ["str", len(value)]
    if isinstance(value, DroppedPayload):
        return [value.kind, value.length]
    if isinstance(value, (tuple, list)):
        return [type(value).__name__, [_shape(item) for item in value]]
    if isinstance(value, dict):
        return ["dict", [[_shape(k), _shape(v)] for k, v in value.items()]]
    if isinstance(value, sc.LayerCall):
        return ["LayerCall", value.kind, _shape(value.function), _shape(value.args), list(value.keys), value.index]
    if isinstance(value, sc.SchedulerError):
        return ["SchedulerError", value.kind, value.message]
    return [type(value).__qualname__]


class _RowLayout:
    __slots__ = ("brief", "get", "name", "shaped")

    def __init__(self, cls: type, fields: tuple[tuple[str, bool, bool], ...]) -> None:
        self.name = cls.__name__
        names = [name for name, _, _ in fields]
        self.get = operator.attrgetter(*names)  # every instruction has two fields or more
        self.shaped = [i + 1 for i, (_, shaped, _) in enumerate(fields) if shaped]
        self.brief = [i + 1 for i, (_, _, brief) in enumerate(fields) if brief]


_ROW_LAYOUTS: Final[dict[type, _RowLayout]] = {cls: _RowLayout(cls, f) for cls, f in INSTRUCTION_FIELDS.items()}


def _rows(instructions: Sequence[sc.Instruction], brief: bool) -> tuple[list[list[Any]], list[list[Any]] | None]:
    full: list[list[Any]] = []
    briefs: list[list[Any]] | None = [] if brief else None
    for ins in instructions:
        layout = _ROW_LAYOUTS.get(type(ins))
        if layout is None:
            raise CodecError(
                f"no digest rule for {type(ins).__qualname__}: add it to dsched._recording_codec.INSTRUCTION_FIELDS"
            )
        row = [layout.name, *layout.get(ins)]
        if briefs is not None:
            briefs.append([layout.name, *[row[i] for i in layout.brief]])
        for i in layout.shaped:
            row[i] = _shape(row[i])
        full.append(row)
    return full, briefs


def instruction_rows(instructions: Sequence[sc.Instruction]) -> list[list[Any]]:
    """One canonical row per instruction: every field, payloads reduced to their shape."""
    return _rows(instructions, False)[0]


def brief_rows(instructions: Sequence[sc.Instruction]) -> list[list[Any]]:
    """Short rows (kind, target, keys, run id): what a report of a divergence shows."""
    briefs = _rows(instructions, True)[1]
    assert briefs is not None
    return briefs


_digest_encoder: Final = msgspec.msgpack.Encoder()


def decisions_digest(instructions: Sequence[sc.Instruction]) -> bytes:
    """A 16-byte digest of a batch's instructions, equal for equal decisions."""
    return digest_and_brief(instructions, False)[0]


def digest_and_brief(instructions: Sequence[sc.Instruction], brief: bool) -> tuple[bytes, list[list[Any]] | None]:
    """:func:`decisions_digest` and, if ``brief``, :func:`brief_rows`, in one pass."""
    full, briefs = _rows(instructions, brief)
    return hashlib.blake2b(_digest_encoder.encode(full), digest_size=16).digest(), briefs
