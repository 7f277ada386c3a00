"""Connections to workers as a ``peer``: ``GetData`` (gather, fetching dependencies), ``PutData`` (scatter).

Used by clients and by workers.  A few idle connections per worker are kept,
so concurrent requests to one worker do not queue behind each other; values
come back still pickled (zero-copy views into the received frame), so that the
caller decides where to unpickle them (a synchronous client in the caller's
thread, a worker on a thread for large values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import anyio

from dsched import _protocol as p
from dsched._comm import Comm, CommClosedError
from dsched._handshake import open_comm
from dsched._security import Security

__all__ = ["PeerPool"]

MAX_IDLE_PER_WORKER: Final = 4


class _PeerConn:
    __slots__ = ("comm", "decoder", "encoder")

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.encoder = p.FrameEncoder(p.PEER)
        self.decoder = p.FrameDecoder(p.PEER)


class PeerPool:
    """Idle connections to workers, reused; one request at a time on each.

    ``security``: the cluster's secret (sent in each ``Hello``) and TLS settings
    (for ``tls://`` worker addresses).
    """

    def __init__(self, *, name: str, security: Security | None = None, timeout: float = 10.0) -> None:
        self.name = name
        self.security = security if security is not None else Security()
        self.timeout = timeout
        self._idle: dict[str, list[_PeerConn]] = {}
        self._request = 0
        self._closed = False

    async def _connect(self, address: str) -> _PeerConn:
        hello = p.Hello(p.PROTOCOL_VERSION, "peer", self.name, auth=self.security.secret)
        comm, _ = await open_comm(address, hello, timeout=self.timeout, peer_kind="worker", security=self.security)
        return _PeerConn(comm)

    async def exchange(self, address: str, message: p.PeerMessage) -> p.PeerMessage:
        """Send one request to ``address`` and return its one reply.  ``CommClosedError`` on failure."""
        idle = self._idle.get(address)
        conn = idle.pop() if idle else await self._connect(address)
        ok = False
        try:
            await conn.comm.send_frame(conn.encoder.encode([message]))
            replies = conn.decoder.decode(await conn.comm.recv_frame())
            if len(replies) != 1:
                raise CommClosedError(f"worker {address} answered with {len(replies)} messages")
            ok = True
        except p.ProtocolError as exc:
            raise CommClosedError(f"worker {address} gave a bad answer: {exc}") from exc
        finally:
            pool = self._idle.setdefault(address, [])
            if ok and not self._closed and len(pool) < MAX_IDLE_PER_WORKER:
                pool.append(conn)
            else:
                with anyio.CancelScope(shield=True):
                    await conn.comm.aclose("done" if ok else "request failed")
        return replies[0]

    def _next_request(self) -> int:
        self._request += 1
        return self._request

    async def get_data(self, address: str, keys: list[str]) -> p.DataReply | None:
        """The pickled values ``address`` holds of ``keys``; None if it answered ``Busy``."""
        request = self._next_request()
        reply = await self.exchange(address, p.GetData(request, keys))
        if isinstance(reply, p.Busy) and reply.request == request:
            return None
        if not isinstance(reply, p.DataReply) or reply.request != request:
            raise CommClosedError(f"worker {address} answered GetData with {type(reply).__name__}")
        return reply

    async def put_data(self, address: str, data: Mapping[str, bytes]) -> dict[str, int]:
        """Store pickled values on ``address``; return their sizes as it accounted them."""
        request = self._next_request()
        reply = await self.exchange(address, p.PutData(request, dict(data)))
        if not isinstance(reply, p.PutDataReply) or reply.request != request:
            raise CommClosedError(f"worker {address} answered PutData with {type(reply).__name__}")
        return dict(reply.nbytes)

    async def aclose(self) -> None:
        self._closed = True
        pools = list(self._idle.values())
        self._idle.clear()
        for pool in pools:
            for conn in pool:
                await conn.comm.aclose("client closing")
