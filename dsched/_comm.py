"""Length-prefixed frames over anyio byte streams: ``Comm``, ``connect`` and ``listen``.

A frame is an 8-byte header, the payload's length as an unsigned 64-bit
little-endian integer, followed by the payload bytes.  This layer never looks
inside a payload: ``dsched._protocol`` encodes and decodes them.

Costs, per frame: reading takes whole chunks from the socket (up to
``RECV_CHUNK`` bytes) into one buffer and cuts every frame it holds out of it,
so many small frames cost one ``receive()``; a payload larger than
``LARGE_PAYLOAD`` is gathered as a list of chunks and joined once.  Writing a
small frame is one ``send()`` of header + payload; a large payload is sent
after its header, without being copied to prepend it.

TLS: pass an ``ssl.SSLContext`` to ``connect`` and ``listen`` and the stream is
wrapped in ``anyio.streams.tls.TLSStream`` (with ``standard_compatible=False``:
no close_notify exchange on close; framing detects truncated frames anyway).
The address scheme becomes ``tls://``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, TaskGroup
from anyio.streams.tls import TLSStream

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "Comm",
    "CommClosedError",
    "ConnectError",
    "FrameTooLarge",
    "Listener",
    "connect",
    "format_address",
    "listen",
    "parse_address",
]

logger = logging.getLogger("dsched.comm")

HEADER = struct.Struct("<Q")
HEADER_SIZE = HEADER.size  # 8
DEFAULT_MAX_FRAME_SIZE = 256 * 1024 * 1024
# asyncio hands over at most 256 KiB per read; asking for more never splits a chunk.
RECV_CHUNK = 256 * 1024
# Payloads above this are gathered as a chunk list (one join) and sent without
# prepending the header (two sends).  Below it, one buffer and one send.
LARGE_PAYLOAD = 256 * 1024
# How long a refusal of an oversized frame may take to write before the comm closes anyway.
OVERSIZE_REPLY_TIMEOUT = 1.0

Handler = Callable[["Comm"], Awaitable[None]]


class TlsGate(Protocol):
    """Bounds the TLS handshakes in progress per remote host (see ``dsched._limits``).

    ``enter(host)`` is False to close the connection at once, before its TLS
    handshake (nothing can be said to it unencrypted); ``leave(host)`` follows
    every ``enter`` that was True, once the handshake ended either way.
    """

    def enter(self, host: str) -> bool: ...

    def leave(self, host: str) -> None: ...


class CommClosedError(Exception):
    """The connection is closed: by the peer (EOF, reset), locally, or after a protocol error.

    ``reason`` says which; every operation on a closed ``Comm`` raises this again.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLarge(CommClosedError):
    """A frame's length exceeded ``max_frame_size``; the connection was closed without reading it."""


class ConnectError(CommClosedError):
    """``connect`` could not reach the peer (refused, unreachable, timed out, TLS handshake failed)."""


def format_address(scheme: str, host: str, port: int) -> str:
    """``tcp://127.0.0.1:8786``; IPv6 hosts in brackets: ``tcp://[::1]:8786``."""
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def parse_address(address: str) -> tuple[str, str, int]:
    """``"tcp://host:port"`` (or ``"host:port"``, or ``tls://...``) -> ``(scheme, host, port)``."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme not in ("tcp", "tls"):
        raise ValueError(f"unsupported address scheme {scheme!r} in {address!r}")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not of the form scheme://host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return scheme, host, int(port_text)


def _remote_host(stream: ByteStream) -> str:
    addr = stream.extra(SocketAttribute.remote_address, None)
    return str(addr[0]) if isinstance(addr, tuple) else str(addr)


def _stream_address(stream: ByteStream, *, remote: bool, scheme: str) -> str:
    attribute = SocketAttribute.remote_address if remote else SocketAttribute.local_address
    addr = stream.extra(attribute, None)
    if isinstance(addr, tuple):
        return format_address(scheme, str(addr[0]), int(addr[1]))
    if addr is None:  # not a socket stream (e.g. a test double)
        return f"{scheme}://?"
    return f"{scheme}://{addr}"


class Comm:
    """One connection carrying frames; ``send_frame``/``recv_frame`` take and return payloads.

    One task may receive at a time (a second concurrent ``recv_frame`` raises
    ``RuntimeError``); sends are serialized by a lock, so frames never interleave.
    ``recv_frame`` is cancellation-safe (partial data stays buffered).  A send
    cancelled after part of a large frame was written closes the comm, since the
    stream can no longer be framed.
    """

    __slots__ = (
        "_big",
        "_big_have",
        "_big_need",
        "_buf",
        "_reading",
        "_reason",
        "_send_lock",
        "_stream",
        "bytes_received",
        "bytes_sent",
        "closed",
        "frames_received",
        "frames_sent",
        "local",
        "max_frame_size",
        "oversize_reply",
        "peer",
    )

    def __init__(
        self,
        stream: ByteStream,
        *,
        peer: str,
        local: str = "",
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._stream = stream
        self.peer = peer
        self.local = local
        self.max_frame_size = max_frame_size
        # A payload to send, best effort, before closing on an oversized frame:
        # the server's refusal naming the limit (None: close without a word).
        self.oversize_reply: bytes | None = None
        self.closed = False
        self._reason = ""
        self._buf = bytearray()
        self._big: list[bytes] | None = None
        self._big_have = 0
        self._big_need = 0
        self._reading = False
        self._send_lock = anyio.Lock(fast_acquire=True)
        self.frames_sent = 0
        self.bytes_sent = 0
        self.frames_received = 0
        self.bytes_received = 0

    @classmethod
    def from_stream(
        cls, stream: ByteStream, *, scheme: str = "tcp", max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> Comm:
        """Wrap a connected socket (or TLS) stream, reading the addresses from it."""
        return cls(
            stream,
            peer=_stream_address(stream, remote=True, scheme=scheme),
            local=_stream_address(stream, remote=False, scheme=scheme),
            max_frame_size=max_frame_size,
        )

    def __repr__(self) -> str:
        state = f"closed: {self._reason}" if self.closed else "open"
        return f"<Comm {self.local} -> {self.peer} {state}>"

    @property
    def close_reason(self) -> str:
        return self._reason

    # -- sending -------------------------------------------------------------------

    async def send_frame(self, payload: bytes | bytearray) -> None:
        """Write one frame.  Raises ``CommClosedError`` (``FrameTooLarge`` if
        ``len(payload) > max_frame_size``, which also closes the comm)."""
        if self.closed:
            raise CommClosedError(self._reason)
        size = len(payload)
        if size > self.max_frame_size:
            reason = f"refusing to send a {size}-byte frame (max_frame_size={self.max_frame_size}) to {self.peer}"
            await self._abort(reason)
            raise FrameTooLarge(reason)
        header = HEADER.pack(size)
        stream = self._stream
        async with self._send_lock:
            try:
                if size <= LARGE_PAYLOAD:
                    await stream.send(header + payload)
                else:
                    try:
                        await stream.send(header)
                        await stream.send(payload)  # type: ignore[arg-type]
                    except BaseException as exc:
                        if not isinstance(exc, (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)):
                            await self._abort(f"send to {self.peer} interrupted mid-frame")
                        raise
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError) as exc:
                raise await self._closed_error(exc, "sending to") from exc
        self.frames_sent += 1
        self.bytes_sent += size

    # -- receiving -----------------------------------------------------------------

    async def recv_frame(self) -> bytes:
        """Read one frame's payload.  Raises ``CommClosedError`` on EOF, reset or close,
        and ``FrameTooLarge`` (after closing) for a header over ``max_frame_size``."""
        if self.closed:
            raise CommClosedError(self._reason)
        if self._reading:
            raise RuntimeError(f"another task is already receiving on {self!r}")
        self._reading = True
        try:
            payload = await self._recv_payload()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError) as exc:
            raise await self._closed_error(exc, "receiving from") from exc
        finally:
            self._reading = False
        self.frames_received += 1
        self.bytes_received += len(payload)
        return payload

    async def _recv_payload(self) -> bytes:
        buf = self._buf
        receive = self._stream.receive
        if self._big is None:
            while len(buf) < HEADER_SIZE:
                buf += await receive(RECV_CHUNK)
            (size,) = HEADER.unpack_from(buf)
            if size > self.max_frame_size:
                reason = (
                    f"{self.peer} announced a {size}-byte frame, over max_frame_size="
                    f"{self.max_frame_size} (garbage or a mismatched protocol?)"
                )
                await self._send_oversize_reply()
                await self._abort(reason)
                raise FrameTooLarge(reason)
            end = HEADER_SIZE + size
            if size <= LARGE_PAYLOAD or len(buf) >= end:
                while len(buf) < end:
                    buf += await receive(RECV_CHUNK)
                with memoryview(buf) as view:
                    payload = view[HEADER_SIZE:end].tobytes()
                del buf[:end]  # O(1): bytearray drops a prefix by moving its start
                return payload
            # A large payload: keep its chunks and join them once.
            with memoryview(buf) as view:
                first = view[HEADER_SIZE:].tobytes()
            buf.clear()
            self._big = [first]
            self._big_have = len(first)
            self._big_need = size
        chunks = self._big
        while self._big_have < self._big_need:
            chunk = await receive(RECV_CHUNK)
            chunks.append(chunk)
            self._big_have += len(chunk)
        excess = self._big_have - self._big_need
        if excess:
            last = chunks[-1]
            chunks[-1] = last[: len(last) - excess]
            buf += last[len(last) - excess :]
        self._big = None
        return b"".join(chunks)

    async def _send_oversize_reply(self) -> None:
        reply = self.oversize_reply
        if reply is None:
            return
        # Bounded: a peer that stopped reading must not keep this connection open.
        with anyio.move_on_after(OVERSIZE_REPLY_TIMEOUT):
            try:
                async with self._send_lock:
                    await self._stream.send(HEADER.pack(len(reply)) + reply)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the refusal only explains why we close

    # -- closing -------------------------------------------------------------------

    async def aclose(self, reason: str = "closed locally") -> None:
        """Close now (unsent data in flight may be dropped).  Idempotent and cancellation-safe."""
        await self._abort(reason)

    async def _abort(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._reason = f"{reason} ({self.local} -> {self.peer})" if self.peer not in reason else reason
        self._buf = bytearray()
        self._big = None
        await anyio.aclose_forcefully(self._stream)

    async def _closed_error(self, exc: BaseException, doing: str) -> CommClosedError:
        if not self.closed:
            if isinstance(exc, anyio.EndOfStream):
                what = "connection closed by peer"
            elif isinstance(exc, anyio.ClosedResourceError):
                what = "stream closed"
            else:
                cause = exc.__cause__ or exc
                what = f"connection lost ({type(cause).__name__}: {cause})"
            await self._abort(f"{what} while {doing} {self.peer}")
        return CommClosedError(self._reason)


# -- connecting --------------------------------------------------------------------


async def connect(
    host: str,
    port: int,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> Comm:
    """Open a TCP (or, with ``ssl_context``, TLS) connection.  Raises ``ConnectError``.

    ``server_hostname`` is the name checked against the server's certificate
    (default: ``host``); set ``ssl_context.check_hostname = False`` to skip it.
    """
    scheme = "tcp" if ssl_context is None else "tls"
    address = format_address(scheme, host, port)
    stream: ByteStream | None = None
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
            if ssl_context is not None:
                stream = await TLSStream.wrap(
                    stream,
                    server_side=False,
                    hostname=server_hostname or host,
                    ssl_context=ssl_context,
                    standard_compatible=False,
                )
    except TimeoutError as exc:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        raise ConnectError(f"timed out after {timeout}s connecting to {address}") from exc
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        raise ConnectError(f"could not connect to {address}: {type(cause).__name__}: {cause}") from exc
    return Comm.from_stream(stream, scheme=scheme, max_frame_size=max_frame_size)


# -- listening ---------------------------------------------------------------------


class Listener:
    """A bound TCP listener; ``listen()`` yields it while it serves connections.

    ``host``/``port`` are the bound address (a real port when 0 was asked),
    ``address`` the one to advertise, e.g. ``tcp://127.0.0.1:41234``.
    ``connections`` counts the connections being handled now.
    """

    def __init__(
        self,
        sockets: list[SocketListener],
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None,
        max_frame_size: int,
        handshake_timeout: float,
        tls_gate: TlsGate | None = None,
    ) -> None:
        self._sockets = sockets
        self._tls_gate = tls_gate
        self._handler = handler
        self._ssl_context = ssl_context
        self._max_frame_size = max_frame_size
        self._handshake_timeout = handshake_timeout
        self.scheme = "tcp" if ssl_context is None else "tls"
        self.bound: list[tuple[str, int]] = []
        for sock in sockets:
            addr = sock.extra(SocketAttribute.local_address)
            assert isinstance(addr, tuple)
            self.bound.append((str(addr[0]), int(addr[1])))
        self.host, self.port = self.bound[0]
        self.address = format_address(self.scheme, self.host, self.port)
        self.connections = 0
        self.accepted = 0

    def __repr__(self) -> str:
        return f"<Listener {self.address} connections={self.connections}>"

    async def _accept_loop(self, sock: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await sock.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:  # e.g. EMFILE: keep the listener alive and retry
                logger.warning("accept on %s failed: %s", self.address, exc)
                await anyio.sleep(0.1)
                continue
            self.accepted += 1
            tg.start_soon(self._serve, stream)

    async def _serve(self, raw: ByteStream) -> None:
        stream = raw
        comm: Comm | None = None
        try:
            if self._ssl_context is not None:
                gate = self._tls_gate
                host = _remote_host(raw)
                if gate is not None and not gate.enter(host):
                    return  # too many TLS handshakes from there at once
                try:
                    with anyio.fail_after(self._handshake_timeout):
                        stream = await TLSStream.wrap(
                            raw, server_side=True, ssl_context=self._ssl_context, standard_compatible=False
                        )
                except (TimeoutError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                    peer = _stream_address(raw, remote=True, scheme=self.scheme)
                    logger.info("TLS handshake with %s on %s failed: %r", peer, self.address, exc)
                    return
                finally:
                    if gate is not None:
                        gate.leave(host)
            comm = Comm.from_stream(stream, scheme=self.scheme, max_frame_size=self._max_frame_size)
            self.connections += 1
            try:
                await self._handler(comm)
            finally:
                self.connections -= 1
        except FrameTooLarge as exc:
            logger.warning("closed connection: %s", exc.reason)
        except CommClosedError as exc:
            logger.debug("connection ended: %s", exc.reason)
        except Exception:
            logger.exception("handler for %s on %s failed; connection closed", comm and comm.peer, self.address)
        finally:
            if comm is not None:
                await comm.aclose("handler finished")
            else:
                await anyio.aclose_forcefully(stream)


@contextlib.asynccontextmanager
async def listen(
    host: str | None,
    port: int,
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    handshake_timeout: float = 10.0,
    tls_gate: TlsGate | None = None,
) -> AsyncIterator[Listener]:
    """Listen on ``host:port`` (port 0: a free port) and run ``await handler(comm)`` per connection.

    Use as ``async with listen("127.0.0.1", 0, handler) as listener:``.  Each
    connection runs in its own task (one per connection, never per message); its
    comm is closed when the handler returns or raises.  A handler's exception is
    logged and ends only that connection.  Leaving the block stops accepting,
    cancels the running handlers and closes their comms.  ``host=None`` binds all
    interfaces.  With ``ssl_context`` connections are TLS (``tls://`` addresses);
    ``tls_gate`` then bounds the TLS handshakes in progress per remote host.
    """
    multi = await anyio.create_tcp_listener(local_host=host or None, local_port=port)
    listener = Listener(
        [sock for sock in multi.listeners if isinstance(sock, SocketListener)],
        handler,
        ssl_context=ssl_context,
        max_frame_size=max_frame_size,
        handshake_timeout=handshake_timeout,
        tls_gate=tls_gate,
    )
    async with multi:
        async with anyio.create_task_group() as tg:
            for sock in listener._sockets:
                tg.start_soon(listener._accept_loop, sock, tg)
            try:
                yield listener
            finally:
                tg.cancel_scope.cancel()
