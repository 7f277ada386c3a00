"""Opening a conversation: connect, send ``Hello``, get ``Welcome`` (or a refusal).

Every connecting side - worker to scheduler, client to scheduler, peer to
worker, the cluster's probe - starts the same way; :func:`open_comm` is that
start, with one timeout over the whole of it and one kind of error.
"""

from __future__ import annotations

import anyio

from dsched import _protocol as p
from dsched._comm import Comm, CommClosedError, ConnectError, connect, parse_address
from dsched._security import Security

__all__ = ["HandshakeRefused", "open_comm"]


class HandshakeRefused(ConnectError):
    """The other side answered the ``Hello`` with ``Refused`` (wrong secret, another protocol version, ...).

    Unlike an unreachable address, trying again will not help.
    """


async def open_comm(
    address: str,
    hello: p.Hello,
    *,
    timeout: float,
    peer_kind: str = "scheduler",
    security: Security | None = None,
) -> tuple[Comm, p.Welcome]:
    """Connect to ``address`` and shake hands; return the open comm and the ``Welcome``.

    A ``tls://`` address is reached with ``security``'s client TLS context (a
    plain ``tcp://`` one is refused with ``SecurityError`` if it requires
    encryption); ``hello`` should carry its secret.  Raises ``ConnectError``
    (a ``CommClosedError``) if the address cannot be reached, the handshake
    fails or times out, or the other side refuses (its reason is in the
    message).  ``peer_kind`` names the other side in messages.
    """
    scheme, host, port = parse_address(address)
    security = security if security is not None else Security()
    security.check_scheme(address, scheme)
    context = security.client_ssl_context() if scheme == "tls" else None
    comm = await connect(host, port, timeout=timeout, ssl_context=context)
    try:
        with anyio.fail_after(timeout):
            await comm.send_frame(p.encode_handshake(hello))
            reply = p.decode_reply(await comm.recv_frame())
    except (TimeoutError, p.ProtocolError, CommClosedError) as exc:
        await comm.aclose("handshake failed")
        why = exc.reason if isinstance(exc, CommClosedError) else repr(exc)
        raise ConnectError(f"handshake with the {peer_kind} at {address} failed: {why}{_hint(scheme)}") from exc
    except BaseException:
        with anyio.CancelScope(shield=True):
            await comm.aclose("handshake interrupted")
        raise
    if isinstance(reply, p.Refused):
        await comm.aclose("refused")
        reason = reply.reason
        if reason == "authentication failed":
            reason += (
                " (this side sent a secret the cluster does not share)" if hello.auth
                else " (it needs the cluster's secret and this side has none: see Security, DSCHED_SECRET)"
            )
        raise HandshakeRefused(f"the {peer_kind} at {address} refused the connection: {reason}")
    return comm, reply


def _hint(scheme: str) -> str:
    """Why a connection may close during the handshake: mostly a mismatch of TLS settings."""
    if scheme == "tls":
        return " (if it requires a client certificate: this side has none, or one it does not trust)"
    return " (if it listens with TLS, connect to its tls:// address)"
