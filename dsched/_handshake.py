"""Opening a conversation: connect, send ``Hello``, get ``Welcome`` (or a refusal).

Every connecting side - worker to scheduler, client to scheduler, peer to
worker, the cluster's probe - starts the same way; :func:`open_comm` is that
start, with one timeout over the whole of it and one kind of error.
"""

from __future__ import annotations

import anyio

from dsched import _protocol as p
from dsched._comm import Comm, ConnectError, connect, parse_address

__all__ = ["open_comm"]


async def open_comm(address: str, hello: p.Hello, *, timeout: float, peer_kind: str = "scheduler") -> tuple[Comm, p.Welcome]:
    """Connect to ``address`` and shake hands; return the open comm and the ``Welcome``.

    Raises ``ConnectError`` (a ``CommClosedError``) if the address cannot be
    reached, the handshake fails or times out, or the other side refuses
    (its reason is in the message).  ``peer_kind`` names the other side in messages.
    """
    _, host, port = parse_address(address)
    comm = await connect(host, port, timeout=timeout)
    try:
        with anyio.fail_after(timeout):
            await comm.send_frame(p.encode_handshake(hello))
            reply = p.decode_reply(await comm.recv_frame())
    except (TimeoutError, p.ProtocolError) as exc:
        await comm.aclose("handshake failed")
        raise ConnectError(f"handshake with the {peer_kind} at {address} failed: {exc!r}") from exc
    except BaseException:
        with anyio.CancelScope(shield=True):
            await comm.aclose("handshake interrupted")
        raise
    if isinstance(reply, p.Refused):
        await comm.aclose("refused")
        raise ConnectError(f"the {peer_kind} at {address} refused the connection: {reply.reason}")
    return comm, reply
