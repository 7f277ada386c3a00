"""dsched's wire protocol: the handshake, the frame codec and the conversation of each role.

The transport (:mod:`dsched._comm`) moves *frames*: an 8-byte length header and a
payload, with a maximum frame size.  This module defines what is inside a payload.
The messages themselves are in :mod:`dsched._messages`.

Frame layout
------------

The first frame each way on a connection is the handshake, one msgpack map:

* the connecting side sends ``Hello``:
  ``{"op": "hello", "protocol": 1, "role": "client" | "worker" | "peer", "name": ..., "address": ..., "auth": ...}``
* the listening side answers ``Welcome`` (``{"op": "welcome", "protocol", "scheduler_id", "name",
  "max_messages", "heartbeat_interval"}``), or ``Refused`` (``{"op": "refused", "reason"}``)
  after which it closes the connection.  ``max_messages`` is the most messages per frame
  the listener decodes: the connecting side encodes with no more than that.

The handshake is a map so that two versions can always read each other's ``protocol``
field: a version mismatch is refused with a clear reason, never a decode error.

Every later frame carries one *batch* of messages of one direction, as a msgpack array
of two elements::

    [batch, [message, message, ...]]

* ``batch`` (int) is, on scheduler -> worker frames, the scheduler core's batch number:
  every instruction of that batch and the earlier ones for this worker is in this frame
  or an earlier one.  The scheduler stamps ``SchedulerState.batch`` when it encodes the
  frame (the instructions of every batch so far have been queued by then), and when a
  batch is split over several frames only the last carries the number.  A worker's
  ``seen_batch`` is the largest ``batch`` among the frames it has carried out; -1 (the
  value of every other direction) does not advance it.
* each message is an array ``[tag, field, ...]`` (array-like msgspec Structs tagged with
  small ints, see :mod:`dsched._messages`).  A frame holds at most ``max_messages``
  messages (100,000 by default; a sender splits a longer batch into several frames,
  :meth:`FrameEncoder.encode_frames`).  Messages in a frame are applied in order.

A frame that does not decode (malformed msgpack, wrong types, unknown tags, too many
messages, bad function references) raises :class:`ProtocolError`, whose message is
safe to log; the receiver logs it and closes the connection.

Conversations
-------------

client (``Hello(role="client", name=<client id>)`` to the scheduler):
    client -> scheduler: ``SubmitGraph``, ``WantKeys``, ``ReleaseKeys``, ``CancelKeys``,
    ``Scattered``, ``WhoHas``, ``GetWorkers``, ``Close``.
    scheduler -> client: ``KeysInMemory``, ``KeyErred``, ``KeyFailed``, ``KeyLost``,
    ``KeysCancelled``, ``ClientError``, ``WhoHasReply``, ``WorkersReply``, ``Close``.
    To gather, a client asks ``WhoHas`` and then fetches from workers as a peer; to
    scatter, it asks ``GetWorkers``, sends ``PutData`` to workers as a peer and then
    ``Scattered`` to the scheduler.

worker (``Hello(role="worker")`` to the scheduler):
    worker -> scheduler: ``RegisterWorker`` first, then ``TaskFinished``, ``TaskErred``,
    ``ReplicasAdded``, ``MissingData``, ``StealResponse``, ``Heartbeat``, ``WorkerStatus``
    (paused or running again); ``Close`` to retire.
    scheduler -> worker: ``Compute``, ``DefineFunction``, ``ForgetFunctions``, ``FreeKeys``,
    ``StealRequest``, ``HeartbeatAck``, ``Close``.  A ``DefineFunction`` comes before (in
    the same frame or an earlier one) every ``Compute`` that refers to its ``ref``.

peer (``Hello(role="peer")`` to a worker, from another worker or a client):
    requester -> worker: ``GetData``, ``PutData``, ``Close``.
    worker -> requester: ``DataReply`` or ``Busy`` for each ``GetData``, ``PutDataReply``
    for each ``PutData``, matched by ``request``.  The ``Welcome`` carries the worker's
    ``scheduler_id``, so a peer can check it reached a worker of the same cluster.

Use: one :class:`FrameEncoder` and one :class:`FrameDecoder` per connection and
direction, reused for every frame::

    encoder = FrameEncoder(SCHEDULER_TO_WORKER)
    payload = encoder.encode([FreeKeys(["x"]), Compute(...)], batch=state.batch)
    decoder = FrameDecoder(SCHEDULER_TO_WORKER)     # on the worker
    batch, messages = decoder.decode_frame(payload)

Give :meth:`FrameDecoder.decode` a ``bytes`` object: payloads decode as views into it
(a ``bytearray`` or ``memoryview`` is copied first, since it could change under them).
"""

from __future__ import annotations

import hmac
from collections.abc import Container, Sequence
from typing import Annotated, Final, Generic, Literal, NamedTuple, TypeAlias, TypeVar

import msgspec
from msgspec import Meta, Struct

from dsched._messages import *  # noqa: F403  (the protocol's public names are re-exported)
from dsched._messages import (
    MAX_NAME_LENGTH,
    ClientToScheduler,
    Payload,
    PeerMessage,
    SchedulerToClient,
    SchedulerToWorker,
    WorkerToScheduler,
)
from dsched._messages import __all__ as _message_names

__all__ = [
    *_message_names,
    "CLIENT_TO_SCHEDULER",
    "MAX_MESSAGES",
    "PEER",
    "PROTOCOL_VERSION",
    "SCHEDULER_TO_CLIENT",
    "SCHEDULER_TO_WORKER",
    "WORKER_TO_SCHEDULER",
    "Channel",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "Hello",
    "LimitExceeded",
    "ProtocolError",
    "Refused",
    "Role",
    "Welcome",
    "check_hello",
    "decode_hello",
    "decode_reply",
    "encode_handshake",
    "payload_bytes",
    "payload_view",
]

PROTOCOL_VERSION: Final = 1
MAX_MESSAGES: Final = 100_000
_MAX_REASON: Final = 200
# A shared secret longer than this is not a secret anyone typed or generated.
MAX_AUTH_LENGTH: Final = 4096

M = TypeVar("M")


class ProtocolError(Exception):
    """A frame or a payload that does not follow the protocol.

    The message is printable ASCII of bounded length, safe to log: whatever the
    peer sent is escaped and cut short.
    """


class LimitExceeded(ProtocolError):
    """A frame over one of the receiver's limits: ``limit`` names it, ``value`` is its value."""

    def __init__(self, message: str, limit: str, value: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


def _safe(text: str) -> str:
    text = ascii(text)[1:-1]
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "values nested too deeply"
    if isinstance(exc, msgspec.DecodeError):
        return _safe(str(exc))
    return _safe(f"{type(exc).__name__}: {exc}")


# --- handshake -----------------------------------------------------------------------

Role: TypeAlias = Literal["client", "worker", "peer"]


class Hello(Struct, tag="hello", tag_field="op", frozen=True, gc=False):
    """First frame of the connecting side.  ``auth`` is a shared token ("" for none)."""

    protocol: int
    role: Role
    name: Annotated[str, Meta(max_length=MAX_NAME_LENGTH)]
    address: Annotated[str, Meta(max_length=MAX_NAME_LENGTH)] = ""
    auth: Annotated[str, Meta(max_length=MAX_AUTH_LENGTH)] = ""

    def __repr__(self) -> str:
        auth = "***" if self.auth else ""
        return (
            f"Hello(protocol={self.protocol}, role={self.role!r}, name={self.name!r}, "
            f"address={self.address!r}, auth={auth!r})"
        )


class Welcome(Struct, tag="welcome", tag_field="op", frozen=True, gc=False):
    """The listening side accepts.  ``max_messages``: the most messages per frame it decodes.

    ``client_id`` tells a client the id the scheduler knows it by: its
    ``Hello.name``, or one the scheduler generated when the name was empty.
    """

    protocol: int
    scheduler_id: str
    name: str = ""
    max_messages: int = MAX_MESSAGES
    heartbeat_interval: float = 0.0
    client_id: str = ""
    dashboard: str = ""  # the scheduler's dashboard link, if it serves one


class Refused(Struct, tag="refused", tag_field="op", frozen=True, gc=False):
    """The listening side refuses (and closes); ``reason`` is meant for humans."""

    reason: str


class _HelloVersion(Struct, tag="hello", tag_field="op"):
    protocol: int


class _ReplyVersion(Struct, tag="welcome", tag_field="op"):
    protocol: int


_handshake_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_reply_decoder: msgspec.msgpack.Decoder[Welcome | Refused] = msgspec.msgpack.Decoder(Welcome | Refused)
_hello_version_decoder = msgspec.msgpack.Decoder(_HelloVersion)
_reply_version_decoder = msgspec.msgpack.Decoder(_ReplyVersion)


def encode_handshake(message: Hello | Welcome | Refused) -> bytes:
    return _handshake_encoder.encode(message)


def _version_mismatch(version: int) -> str:
    return f"protocol version {version} is not supported: this side speaks version {PROTOCOL_VERSION}"


def decode_hello(payload: bytes | bytearray | memoryview) -> Hello:
    """Decode the first frame of a connection; :class:`ProtocolError` if it is not a Hello.

    A Hello of another protocol version that does not decode is reported as a
    version mismatch rather than as a type error.
    """
    try:
        return _hello_decoder.decode(payload)
    except Exception as exc:
        reason = _reason(exc)
    try:
        version = _hello_version_decoder.decode(payload).protocol
    except Exception:
        version = PROTOCOL_VERSION
    if version != PROTOCOL_VERSION:
        raise ProtocolError(_version_mismatch(version))
    raise ProtocolError(f"invalid hello: {reason}")


def check_hello(hello: Hello, *, roles: Container[Role], auth: str = "") -> Refused | None:
    """Why this Hello is refused, as the :class:`Refused` to answer, or None to welcome it.

    ``roles``: the roles this listener serves; ``auth``: the token it requires ("" for none).
    """
    if hello.protocol != PROTOCOL_VERSION:
        return Refused(_version_mismatch(hello.protocol))
    if hello.role not in roles:
        return Refused(f"role {hello.role!r} is not served here")
    if auth and not hmac.compare_digest(hello.auth.encode(), auth.encode()):
        return Refused("authentication failed")
    return None


def decode_reply(payload: bytes | bytearray | memoryview) -> Welcome | Refused:
    """Decode the answer to a Hello; a Welcome of another protocol version raises ProtocolError."""
    try:
        reply = _reply_decoder.decode(payload)
    except Exception as exc:
        reason = _reason(exc)
        try:
            version = _reply_version_decoder.decode(payload).protocol
        except Exception:
            version = PROTOCOL_VERSION
        if version != PROTOCOL_VERSION:
            raise ProtocolError(_version_mismatch(version)) from None
        raise ProtocolError(f"invalid handshake reply: {reason}") from None
    if isinstance(reply, Welcome) and reply.protocol != PROTOCOL_VERSION:
        raise ProtocolError(_version_mismatch(reply.protocol))
    return reply


# --- frames --------------------------------------------------------------------------


class Channel(Generic[M]):
    """One direction of a conversation: a name and the union of its messages."""

    __slots__ = ("message_type", "name")

    def __init__(self, name: str, message_type: object) -> None:
        self.name = name
        self.message_type = message_type

    def __repr__(self) -> str:
        return f"<Channel {self.name}>"


CLIENT_TO_SCHEDULER: Final[Channel[ClientToScheduler]] = Channel("client->scheduler", ClientToScheduler)
SCHEDULER_TO_CLIENT: Final[Channel[SchedulerToClient]] = Channel("scheduler->client", SchedulerToClient)
WORKER_TO_SCHEDULER: Final[Channel[WorkerToScheduler]] = Channel("worker->scheduler", WorkerToScheduler)
SCHEDULER_TO_WORKER: Final[Channel[SchedulerToWorker]] = Channel("scheduler->worker", SchedulerToWorker)
PEER: Final[Channel[PeerMessage]] = Channel("peer", PeerMessage)


class Frame(NamedTuple, Generic[M]):
    """A decoded frame: the sender's batch number (-1 if none) and its messages."""

    batch: int
    messages: list[M]


def _check_max_messages(max_messages: int) -> int:
    if max_messages < 1:
        raise ValueError(f"max_messages must be at least 1, not {max_messages}")
    return max_messages


class FrameEncoder(Generic[M]):
    """Encodes batches of one channel's messages into frame payloads; reuse one per connection."""

    __slots__ = ("_encoder", "channel", "max_messages")

    def __init__(self, channel: Channel[M], *, max_messages: int = MAX_MESSAGES) -> None:
        self.channel = channel
        self.max_messages = _check_max_messages(max_messages)
        self._encoder = msgspec.msgpack.Encoder()

    def _frame(self, messages: Sequence[M], batch: int) -> tuple[int, Sequence[M]]:
        if not isinstance(messages, (list, tuple)):
            messages = list(messages)
        if len(messages) > self.max_messages:
            raise ValueError(
                f"{len(messages)} messages do not fit in one {self.channel.name} frame "
                f"(at most {self.max_messages}); use encode_frames"
            )
        return (batch, messages)

    def encode(self, messages: Sequence[M], batch: int = -1) -> bytes:
        """One frame payload holding ``messages`` (at most ``max_messages``)."""
        return self._encoder.encode(self._frame(messages, batch))

    def encode_into(self, messages: Sequence[M], buffer: bytearray, offset: int = 0, batch: int = -1) -> int:
        """Write the payload into ``buffer`` at ``offset`` (resizing it to end there); return its length.

        Lets the transport reserve room for its length prefix and send one buffer.
        """
        self._encoder.encode_into(self._frame(messages, batch), buffer, offset)
        return len(buffer) - offset

    def encode_frames(self, messages: Sequence[M], batch: int = -1) -> list[bytes]:
        """As many payloads as needed for ``messages``, in order.

        Only the last carries ``batch``; the others carry -1, since a worker that
        has carried out only part of a batch has not seen that batch yet.
        """
        step = self.max_messages
        if len(messages) <= step:
            return [self.encode(messages, batch)]
        starts = range(0, len(messages), step)
        last = starts[-1]
        return [self.encode(messages[i : i + step], batch if i == last else -1) for i in starts]


class FrameDecoder(Generic[M]):
    """Decodes frame payloads of one channel; reuse one per connection.

    Every failure is a :class:`ProtocolError`.
    """

    __slots__ = ("_decoder", "channel", "max_messages")

    def __init__(self, channel: Channel[M], *, max_messages: int = MAX_MESSAGES) -> None:
        self.channel = channel
        self.max_messages = _check_max_messages(max_messages)
        # The length limit is checked on the array header, before any message is built.
        union = channel.message_type
        messages_type = Annotated[list[union], Meta(max_length=max_messages)]  # type: ignore[valid-type]
        self._decoder = msgspec.msgpack.Decoder(tuple[int, messages_type])

    def decode_frame(self, payload: bytes | bytearray | memoryview) -> Frame[M]:
        if type(payload) is not bytes:
            payload = bytes(payload)
        try:
            batch, messages = self._decoder.decode(payload)
        except Exception as exc:
            if self._too_many_messages(exc):
                raise LimitExceeded(
                    f"a {self.channel.name} frame holds more than max_messages={self.max_messages} messages",
                    "max_messages",
                    self.max_messages,
                ) from None
            raise ProtocolError(f"invalid {self.channel.name} frame: {_reason(exc)}") from None
        return Frame(batch, messages)

    def _too_many_messages(self, exc: Exception) -> bool:
        # msgspec checks the messages array's length on its header (Meta(max_length)),
        # before decoding any message; its error names the path "$[1]".
        text = str(exc)
        return (
            isinstance(exc, msgspec.ValidationError)
            and text.startswith(f"Expected `array` of length <= {self.max_messages}")
            and text.endswith("- at `$[1]`")
        )

    def decode(self, payload: bytes | bytearray | memoryview) -> list[M]:
        """The messages of one frame payload, in order."""
        return self.decode_frame(payload).messages


# --- payloads ------------------------------------------------------------------------


_view_decoder = msgspec.msgpack.Decoder(memoryview)
_bytes_decoder = msgspec.msgpack.Decoder(bytes)


def payload_view(payload: Payload) -> memoryview:
    """The content of an opaque payload, without copying (for ``pickle.loads``).

    A received payload is a ``Raw`` holding a msgpack bin; anything else a peer
    put there raises :class:`ProtocolError` (the one task or value is bad, not
    the connection).
    """
    if isinstance(payload, bytes):
        return memoryview(payload)
    try:
        return _view_decoder.decode(payload)
    except msgspec.DecodeError:
        raise ProtocolError("payload is not a msgpack bin") from None


def payload_bytes(payload: Payload) -> bytes:
    """The content of an opaque payload as ``bytes`` (a copy, unless it already is bytes)."""
    if isinstance(payload, bytes):
        return payload
    try:
        return _bytes_decoder.decode(payload)
    except msgspec.DecodeError:
        raise ProtocolError("payload is not a msgpack bin") from None
