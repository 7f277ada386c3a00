"""Recording a scheduler's stream of core events to a file, for ``dsched replay``.

The scheduler core is deterministic: the same batches of events fed to a fresh
``SchedulerState`` with the same configuration give the same instructions.  So
a recording is just that: a header (the core's configuration and where the
recording comes from), then one record per ``handle_events`` call with the
batch's events and a digest of the instructions the call returned, so that a
replay can tell whether it took the same decisions.

A recording that starts with the scheduler replays from a fresh core.  One
started in the middle of a run (on request: ``client.start_recording()``,
``dsched record start``, ``POST /api/record``) begins with a *snapshot*: the
core's whole state, pickled, as the record after the header.  No sequence of
events could rebuild that state (run ids, batch numbers, submission
generations, learnt durations, retry and failure counters depend on the whole
history), but a copy of it replays exactly.  A snapshot holds the tasks'
payloads, so a mid-run recording always keeps them; it loads into the
*interpreted* core (compiled classes cannot be rebuilt from a pickle without
their constructor's arguments), which is where a replay runs by default.
Taking it holds the scheduler's loop for as long as pickling the state takes
(about a second per million tasks).

The file: the magic bytes :data:`MAGIC`, then frames, each a 4-byte
little-endian length and a msgpack body: a :class:`Header`, a
:class:`SnapshotRecord` when the header's ``first_batch`` is not 0, one
:class:`BatchRecord` per batch and, when the recording ends normally, an
:class:`EndRecord` that says why it ended ("closed", "size-limit" or "error").
A file whose writer died just lacks the end record (and may end in a partial
frame, which the reader ignores); it still replays up to its last full batch.

The size is bounded: a batch that would take the file past ``max_bytes`` is
not written; the recorder writes an end record saying so, logs a warning and
records nothing more.  Payloads (task arguments, exceptions, tracebacks) count
against the bound; ``keep_payloads=False`` replaces each by its type, length
and digest, which is all a replay needs (the core only compares them).
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import platform
import struct
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import IO, Any, Final

import msgspec

import sched_core as sc
from dsched._recording_codec import CodecError, digest_and_brief, encode_events
from dsched._version import __version__

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "BatchRecord",
    "EndRecord",
    "EventRecorder",
    "Header",
    "RecordingError",
    "RecordingReader",
    "SnapshotRecord",
    "load_snapshot",
]

logger = logging.getLogger("dsched.recording")

MAGIC: Final = b"dsched-recording\n"
FORMAT_VERSION: Final = 1
DEFAULT_MAX_BYTES: Final = 1 << 30
# Room kept for the end record, so that a full file still says why it ended.
_END_RESERVE: Final = 1024
_MIN_MAX_BYTES: Final = 4096
_FRAME_LENGTH: Final = struct.Struct("<I")
_MAX_FRAME: Final = 2**32 - 1
_MAX_MESSAGE: Final = 500


class RecordingError(Exception):
    """A file is not a readable dsched recording (the message says where and why)."""


class Header(msgspec.Struct, tag="header", kw_only=True):
    """Where a recording comes from and how to rebuild the core it fed."""

    format: int
    dsched_version: str
    compiled: bool  # was the recording scheduler's core compiled
    python: str
    scheduler_id: str
    started: float  # wall-clock time (seconds since the epoch)
    # SchedulerState's constructor arguments.
    allowed_failures: int
    max_queue_depth: int
    bandwidth: float
    payloads: bool  # False: payloads were replaced by DroppedPayload
    decisions: bool  # True: each batch keeps brief rows of its instructions
    max_bytes: int
    # state.batch when the recording started: 0 from the scheduler's start, else a
    # SnapshotRecord of the state follows the header and batches count on from it.
    first_batch: int = 0


class BatchRecord(msgspec.Struct, tag="batch", kw_only=True):
    """One ``handle_events`` call: its events and what it decided."""

    number: int  # state.batch after the call: 1, 2, ...
    time: float  # seconds since the recording started
    events: list[Any]  # rows of dsched._recording_codec.encode_events
    n_instructions: int
    digest: bytes  # dsched._recording_codec.decisions_digest of the instructions
    decisions: list[Any] | None = None  # brief rows, if the header says so
    error: str | None = None  # the core raised this instead of returning


class SnapshotRecord(msgspec.Struct, tag="snapshot", kw_only=True):
    """The core's state when a recording started mid-run (``SchedulerState``, pickled)."""

    batch: int  # state.batch when it was taken
    state: bytes


class EndRecord(msgspec.Struct, tag="end", kw_only=True):
    reason: str  # "closed", "size-limit" or "error"
    message: str
    batches: int
    events: int


_encoder: Final = msgspec.msgpack.Encoder()
_Record = Header | SnapshotRecord | BatchRecord | EndRecord
_decoder: Final[msgspec.msgpack.Decoder[_Record]] = msgspec.msgpack.Decoder(_Record)


def _frame(record: _Record) -> bytes:
    body = _encoder.encode(record)
    if len(body) > _MAX_FRAME:
        raise CodecError(f"a record of {len(body):,} bytes is too large for one frame")
    return _FRAME_LENGTH.pack(len(body)) + body


class EventRecorder:
    """Writes a scheduler's batches of core events to ``path``, up to ``max_bytes``.

    Give it to the scheduler before its first batch: ``start(state,
    scheduler_id)`` writes the header, ``write_batch(events, instructions)``
    follows every ``handle_events`` call (``instructions=None`` with ``error``
    when the call raised), ``close()`` ends the file.  Recording never raises
    into the scheduler once started: a failure to encode or write stops the
    recording, says so in the file if it can, and logs an error.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        keep_payloads: bool = True,
        keep_decisions: bool = True,
    ) -> None:
        if max_bytes < _MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {_MIN_MAX_BYTES}, not {max_bytes}")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.keep_payloads = keep_payloads
        self.keep_decisions = keep_decisions
        self.bytes_written = 0
        self.batches = 0
        self.events = 0
        self.stopped_reason = ""  # why it no longer records ("" while it does, or before start)
        self._file: IO[bytes] | None = None
        self._state: sc.SchedulerState | None = None
        self._first_batch = 0
        self._t0 = 0.0

    @property
    def first_batch(self) -> int:
        """The core's batch count when the recording started (0: with the scheduler)."""
        return self._first_batch

    @property
    def active(self) -> bool:
        """True between ``start`` and the end of the recording."""
        return self._file is not None

    def start(self, state: sc.SchedulerState, scheduler_id: str = "") -> None:
        """Create the file and write the header, and a snapshot of ``state`` if it has run already."""
        if self._file is not None or self.stopped_reason:
            raise RuntimeError("this recorder was started already")
        first = state.batch
        snapshot = b""
        if first:
            if not self.keep_payloads:
                raise ValueError("a recording that starts mid-run keeps payloads (its snapshot holds them)")
            began = time.perf_counter()
            snapshot = _frame(SnapshotRecord(batch=first, state=_pickle_state(state)))
            logger.info("snapshot of the scheduler's state at batch %d: %d bytes in %.2f s",
                        first, len(snapshot), time.perf_counter() - began)
        header = Header(
            format=FORMAT_VERSION,
            dsched_version=__version__,
            compiled=sc.COMPILED,
            python=platform.python_version(),
            scheduler_id=scheduler_id,
            started=time.time(),
            allowed_failures=state.allowed_failures,
            max_queue_depth=state.max_queue_depth,
            bandwidth=state.bandwidth,
            payloads=self.keep_payloads,
            decisions=self.keep_decisions,
            max_bytes=self.max_bytes,
            first_batch=first,
        )
        data = MAGIC + _frame(header) + snapshot
        if len(data) + _END_RESERVE > self.max_bytes:
            raise ValueError(
                f"max_bytes={self.max_bytes:,} leaves no room for a batch"
                + (f" after the state's snapshot ({len(snapshot):,} bytes)" if snapshot else "")
            )
        file = open(self.path, "wb")
        try:
            file.write(data)
            file.flush()
        except BaseException:
            file.close()
            raise
        self._file = file
        self._state = state
        self._first_batch = first
        self._t0 = time.monotonic()
        self.bytes_written = len(data)
        logger.info("recording the scheduler's core events to %s (at most %d bytes)", self.path, self.max_bytes)

    def write_batch(
        self,
        events: Sequence[sc.SchedulerEvent],
        instructions: Sequence[sc.Instruction] | None,
        error: BaseException | None = None,
    ) -> None:
        """Record one ``handle_events`` call, right after it returned (or raised ``error``)."""
        file = self._file
        if file is None:
            return
        state = self._state
        number = self._first_batch + self.batches + 1
        if state is not None and state.batch != number:
            # Someone fed the core without recording it: what follows would not replay.
            self._stop("error", f"the core ran batch {state.batch} but this is recorded batch {number}")
            return
        try:
            done = instructions if instructions is not None else ()
            digest, decisions = digest_and_brief(done, self.keep_decisions)
            record = BatchRecord(
                number=number,
                time=time.monotonic() - self._t0,
                events=encode_events(events, self.keep_payloads),
                n_instructions=len(done),
                digest=digest,
                decisions=decisions,
                error=None if instructions is not None else _describe(error),
            )
            data = _frame(record)
        except (CodecError, TypeError, ValueError, OverflowError) as exc:
            self._stop("error", f"batch {number} cannot be recorded: {exc}")
            return
        if self.bytes_written + len(data) + _END_RESERVE > self.max_bytes:
            self._stop(
                "size-limit",
                f"batch {number} ({len(data):,} bytes) would take the file past "
                f"max_bytes={self.max_bytes:,}",
            )
            return
        try:
            file.write(data)
            file.flush()
        except OSError as exc:
            self._stop("error", f"writing batch {number} failed: {exc}")
            return
        self.bytes_written += len(data)
        self.batches += 1
        self.events += len(events)

    def close(self) -> None:
        """End the recording (the file says "closed"); a no-op once it has ended."""
        self._stop("closed", "the recording was closed")

    def _stop(self, reason: str, message: str) -> None:
        file = self._file
        if file is None:
            return
        self._file = None
        self._state = None
        self.stopped_reason = reason
        if reason == "size-limit":
            logger.warning("recording to %s stopped after %d batches: %s", self.path, self.batches, message)
        elif reason == "error":
            logger.error("recording to %s stopped after %d batches: %s", self.path, self.batches, message)
        else:
            logger.info("recording to %s closed after %d batches", self.path, self.batches)
        end = EndRecord(reason=reason, message=message[:_MAX_MESSAGE], batches=self.batches, events=self.events)
        try:
            data = _frame(end)
            file.write(data)
            self.bytes_written += len(data)
        except OSError as exc:
            logger.error("could not end the recording %s: %s", self.path, exc)
        finally:
            try:
                file.close()
            except OSError as exc:
                logger.error("could not close the recording %s: %s", self.path, exc)

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "the core raised"
    return f"{type(error).__qualname__}: {error}"[:_MAX_MESSAGE]


def _pickle_state(state: sc.SchedulerState) -> bytes:
    # Millions of objects, none of them garbage: the cyclic GC would only slow this down.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return pickle.dumps(state, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"the scheduler's state cannot be snapshotted: {exc}") from None
    finally:
        if collecting:
            gc.enable()


def load_snapshot(snapshot: SnapshotRecord, path: str = "the recording") -> sc.SchedulerState:
    """The ``SchedulerState`` a mid-run recording starts from (unpickled: replay only files you trust)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        state = pickle.loads(snapshot.state)
    except Exception as exc:
        mode = "compiled" if sc.COMPILED else "interpreted"
        raise RecordingError(
            f"{path}: its snapshot of the scheduler's state (batch {snapshot.batch}) does not load into the "
            f"{mode} core ({type(exc).__name__}: {exc}); snapshots load into the interpreted core: "
            "replay without --compiled"
        ) from None
    finally:
        if collecting:
            gc.enable()
    if not isinstance(state, sc.SchedulerState) or state.batch != snapshot.batch:
        raise RecordingError(f"{path}: its snapshot is not a scheduler state at batch {snapshot.batch}")
    return state


class RecordingReader:
    """Reads a recording: ``header`` at once, then the batches by iterating, then ``end``.

    ``with RecordingReader(path) as reader: for batch in reader: ...``.
    Anything that is not a well-formed recording raises :class:`RecordingError`
    naming the problem and the byte offset.  A file cut short (its writer
    died) is not an error: iteration stops at the last whole batch, ``end``
    stays None and ``truncated`` tells whether a partial frame was left over.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.end: EndRecord | None = None
        self.snapshot: SnapshotRecord | None = None  # the state a mid-run recording starts from
        self.truncated = False
        try:
            self._file: IO[bytes] = open(self.path, "rb")
        except OSError as exc:
            raise RecordingError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _fail(self, offset: int, problem: str) -> RecordingError:
        return RecordingError(f"{self.path}: {problem} (at byte {offset})")

    def _read_header(self) -> Header:
        magic = self._file.read(len(MAGIC))
        if magic != MAGIC:
            raise self._fail(0, "not a dsched recording (it does not start with the recording magic bytes)")
        record = self._next_record()
        if record is None:
            raise self._fail(len(MAGIC), "the recording has no header")
        if not isinstance(record, Header):
            raise self._fail(len(MAGIC), f"the recording starts with a {type(record).__name__}, not a header")
        if record.format != FORMAT_VERSION:
            raise self._fail(
                len(MAGIC),
                f"recording format {record.format} (dsched {record.dsched_version}); "
                f"this dsched reads format {FORMAT_VERSION}",
            )
        if record.first_batch < 0:
            raise self._fail(len(MAGIC), f"the header's first_batch is {record.first_batch}")
        if record.first_batch:
            offset = self._file.tell()
            snapshot = self._next_record()
            if not isinstance(snapshot, SnapshotRecord) or snapshot.batch != record.first_batch:
                raise self._fail(offset, f"the snapshot of batch {record.first_batch} the header announces is missing")
            self.snapshot = snapshot
        return record

    def _next_record(self) -> _Record | None:
        """The next record, or None at the end of the file (or of a partial last frame)."""
        offset = self._file.tell()
        prefix = self._file.read(_FRAME_LENGTH.size)
        if not prefix:
            return None
        if len(prefix) < _FRAME_LENGTH.size:
            self.truncated = True
            return None
        (length,) = _FRAME_LENGTH.unpack(prefix)
        body = self._file.read(length)
        if len(body) < length:
            self.truncated = True
            return None
        # A big batch decodes to millions of small lists, none in a cycle: without
        # the cyclic collector running over and over meanwhile, decoding is much faster.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise self._fail(offset, f"a record does not decode: {exc}") from None
        finally:
            if collecting:
                gc.enable()

    def __iter__(self) -> Iterator[BatchRecord]:
        expected = self.header.first_batch + 1
        while self.end is None:
            offset = self._file.tell()
            record = self._next_record()
            if record is None:
                return
            if isinstance(record, EndRecord):
                self.end = record
                return
            if not isinstance(record, BatchRecord):
                raise self._fail(offset, f"a {type(record).__name__} among the batches")
            if record.number != expected:
                raise self._fail(offset, f"batch {record.number} where batch {expected} should be")
            expected += 1
            yield record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
