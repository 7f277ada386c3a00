"""Worker to worker (and client to worker) data transfer: the ``peer`` conversation.

:func:`fetch` is the worker's requesting side (over a
:class:`~dsched._peer_pool.PeerPool`, which clients use too).
:func:`serve_peer` is the serving side, run by a worker's listener for every
incoming ``peer`` connection: ``GetData`` is answered with the pickled values
held here (or ``Busy`` when too many transfers are already being served),
``PutData`` stores values and answers their sizes.

Values larger than ``OFFLOAD_BYTES`` are pickled and unpickled on a thread so
that a big transfer does not stall the event loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Final

import anyio

from dsched import _protocol as p
from dsched._comm import Comm, CommClosedError, FrameTooLarge
from dsched._limits import HANDSHAKE_MAX_FRAME_SIZE, ConnectionLimiter, Limits, RefusalCounts, peer_host
from dsched._peer_pool import PeerPool
from dsched._serialize import dumps_value_or_error, loads_value, sizeof

__all__ = ["OFFLOAD_BYTES", "PeerReply", "PeerServing", "fetch", "serve_peer"]

logger = logging.getLogger("dsched.worker")

OFFLOAD_BYTES: Final = 1_000_000


class PeerReply:
    """What a peer answered to ``GetData``: the values it had, the keys it lacked, or busy."""

    __slots__ = ("busy", "missing", "values")

    def __init__(self, values: dict[str, object], missing: list[str], busy: bool = False) -> None:
        self.values = values
        self.missing = missing
        self.busy = busy


async def fetch(pool: PeerPool, address: str, keys: list[str]) -> PeerReply:
    """Fetch ``keys`` from ``address`` and unpickle them (on a thread when large).

    Raises ``CommClosedError`` if the peer cannot be reached or answers wrongly.
    """
    reply = await pool.get_data(address, keys)
    if reply is None:
        return PeerReply({}, [], busy=True)
    total = sum(len(v) for v in reply.data.values())
    if total > OFFLOAD_BYTES:
        values = await anyio.to_thread.run_sync(_loads_all, reply.data)
    else:
        values = _loads_all(reply.data)
    return PeerReply(values, list(reply.missing))


def _loads_all(data: Mapping[str, p.Payload]) -> dict[str, object]:
    return {key: loads_value(p.payload_view(payload)) for key, payload in data.items()}


def _dumps_all(values: Mapping[str, object]) -> dict[str, p.Payload]:
    return {key: dumps_value_or_error(key, value) for key, value in values.items()}


class PeerServing:
    """The serving side's shared state: the data store and a limit on concurrent transfers."""

    def __init__(
        self,
        data: Mapping[str, object],
        on_put: Callable[[dict[str, object]], dict[str, int]],
        *,
        scheduler_id: str,
        address: str,
        auth: str = "",
        max_concurrent: int = 10,
        handshake_timeout: float = 10.0,
        limits: Limits | None = None,
    ) -> None:
        self.data = data
        self.on_put = on_put
        self.scheduler_id = scheduler_id
        self.address = address
        self.auth = auth
        self.max_concurrent = max_concurrent
        # The same per-host connection limits and refusals as the scheduler's.
        self.handshake_timeout = handshake_timeout
        self.limits = limits if limits is not None else Limits()
        self.connection_limiter = ConnectionLimiter(self.limits)
        self.refused = RefusalCounts()
        self.protocol_errors = 0
        self.lingering = 0  # refused connections whose Hello is being read
        self.serving = 0
        self.served_keys = 0
        self.busy_replies = 0


async def serve_peer(serving: PeerServing, comm: Comm) -> None:
    """Answer one peer connection until it closes (the listener's handler)."""
    host = peer_host(comm.peer)
    limiter = serving.connection_limiter
    over = limiter.admit(host)
    max_frame_size = comm.max_frame_size  # the listener's, restored after the handshake
    comm.max_frame_size = min(max_frame_size, HANDSHAKE_MAX_FRAME_SIZE)  # a Hello is small
    if over is not None:
        limit, reason = over
        serving.refused[limit] += 1
        logger.warning("refused peer %s: %s", comm.peer, reason)
        # Take its Hello first: closing with it unread resets the connection (the
        # refusal may be lost).  Only so many at a time; in a flood, refuse at once.
        linger = 1 if serving.lingering < _MAX_LINGERING else 0
        serving.lingering += linger
        try:
            with anyio.move_on_after(_REFUSAL_LINGER):
                await _refuse(comm, reason, read_hello=linger == 1)
        finally:
            serving.lingering -= linger
        return
    handshaking = True
    try:
        hello = await _hello(serving, comm)
        if hello is None:
            return
        await comm.send_frame(p.encode_handshake(p.Welcome(
            p.PROTOCOL_VERSION, serving.scheduler_id, name=serving.address, max_messages=serving.limits.max_messages,
        )))
        limiter.handshake_done(host)
        handshaking = False
        await _serve(serving, comm, max_frame_size)
    finally:
        limiter.release(host, handshaking=handshaking)


async def _hello(serving: PeerServing, comm: Comm) -> p.Hello | None:
    """The peer's accepted Hello, or None after refusing it."""
    try:
        with anyio.fail_after(serving.handshake_timeout):
            hello = p.decode_hello(await comm.recv_frame())
    except p.ProtocolError as exc:
        serving.protocol_errors += 1
        logger.warning("bad peer handshake from %s: %s", comm.peer, exc)
        await _refuse(comm, str(exc))
        return None
    except FrameTooLarge as exc:
        serving.refused["max_frame_size"] += 1
        logger.warning("refused peer %s: %s", comm.peer, exc.reason)
        return None
    except TimeoutError:
        serving.refused["handshake_timeout"] += 1
        await _refuse(comm, f"no handshake within handshake_timeout={serving.handshake_timeout}s")
        return None
    refusal = p.check_hello(hello, roles=("peer",), auth=serving.auth)
    if refusal is not None:
        logger.info("refused peer %s: %s", comm.peer, refusal.reason)
        await _refuse(comm, refusal.reason)
        return None
    return hello


async def _refuse(comm: Comm, reason: str, *, read_hello: bool = False) -> None:
    try:
        if read_hello:
            await comm.recv_frame()
        await comm.send_frame(p.encode_handshake(p.Refused(reason)))
    except CommClosedError:
        pass  # it left first; the refusal only explained why we close


# How long a refusal may take: to read the refused peer's Hello, or to write its reason.
_REFUSAL_LINGER: Final = 1.0
# Refused connections read at once, at most (each holds a socket for up to _REFUSAL_LINGER).
_MAX_LINGERING: Final = 64


async def _serve(serving: PeerServing, comm: Comm, max_frame_size: int) -> None:
    comm.max_frame_size = max_frame_size
    encoder = p.FrameEncoder(p.PEER)
    decoder = p.FrameDecoder(p.PEER, max_messages=serving.limits.max_messages)
    comm.oversize_reply = encoder.encode([p.Close(f"a frame over max_frame_size={comm.max_frame_size} bytes was refused")])
    while True:
        try:
            messages = decoder.decode(await comm.recv_frame())
            for msg in messages:
                if isinstance(msg, p.Close):
                    return
                reply = await _answer(serving, msg)
                if reply is None:
                    raise p.ProtocolError(f"unexpected {type(msg).__name__} from a peer")
                await comm.send_frame(encoder.encode([reply]))
        except p.ProtocolError as exc:
            if isinstance(exc, p.LimitExceeded):
                serving.refused[exc.limit] += 1
            else:
                serving.protocol_errors += 1
            logger.warning("protocol error from peer %s, closing: %s", comm.peer, exc)
            with anyio.move_on_after(_REFUSAL_LINGER):
                with contextlib.suppress(CommClosedError):  # it left first: the reason only explained why we close
                    await comm.send_frame(encoder.encode([p.Close(str(exc))]))
            return
        except FrameTooLarge as exc:
            serving.refused["max_frame_size"] += 1
            logger.warning("closed peer %s: %s", comm.peer, exc.reason)
            return
        except CommClosedError:
            return


async def _answer(serving: PeerServing, msg: p.PeerMessage) -> p.PeerMessage | None:
    if isinstance(msg, p.GetData):
        if serving.serving >= serving.max_concurrent:
            serving.busy_replies += 1
            return p.Busy(msg.request)
        serving.serving += 1
        try:
            data = serving.data
            held = {key: data[key] for key in msg.keys if key in data}
            missing = [key for key in msg.keys if key not in held]
            if sum(sizeof(v) for v in held.values()) > OFFLOAD_BYTES:
                payloads = await anyio.to_thread.run_sync(_dumps_all, held)
            else:
                payloads = _dumps_all(held)
            serving.served_keys += len(payloads)
            return p.DataReply(msg.request, payloads, missing)
        finally:
            serving.serving -= 1
    if isinstance(msg, p.PutData):
        total = sum(len(v) for v in msg.data.values())
        try:
            if total > OFFLOAD_BYTES:
                values = await anyio.to_thread.run_sync(_loads_all, msg.data)
            else:
                values = _loads_all(msg.data)
        except p.ProtocolError:
            raise
        except Exception as exc:  # not a pickle (garbage, or truncated): nothing of it is stored
            detail = ascii(f"{type(exc).__name__}: {exc}")[1:-1][:120]
            raise p.ProtocolError(f"PutData {msg.request}: a value does not unpickle ({detail})") from None
        return p.PutDataReply(msg.request, serving.on_put(values))
    return None
