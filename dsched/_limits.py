"""Limits a listener enforces on what one peer may send or hold open.

:class:`Limits` groups the bounds of a :class:`~dsched.SchedulerServer` (and, for
the connection counts, of a worker's peer listener) that the frame size and the
handshake timeout do not already cover.  Every limit refuses the offending
party only, with a message naming the limit and its value, and is counted in
:class:`RefusalCounts` (the scheduler's status and metrics show them).

:class:`ConnectionLimiter` counts open connections and handshakes in progress
per remote host.  Loopback gets its own, much higher, bounds: a local cluster
runs hundreds of workers and clients on one host, while a remote host holding
that many connections is more likely a runaway loop or an attack.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Final, TypedDict

from dsched._comm import parse_address
from dsched._sizes import parse_bytes

__all__ = [
    "HANDSHAKE_MAX_FRAME_SIZE", "ConnectionLimiter", "Limits", "RefusalCounts", "ServerLimits", "TlsHandshakeGate",
    "parse_limits", "peer_host",
]

# A Hello or its answer is a few hundred bytes: while one is awaited, a frame
# announcing more is refused before anything is allocated for it, so that a
# crowd of half-open connections cannot each reserve max_frame_size.
HANDSHAKE_MAX_FRAME_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-peer bounds of a listener; the defaults suit a large deployment.

    * ``max_messages``: messages in one frame (advertised in ``Welcome``; the
      frame is refused before any of its messages is acted on).
    * ``max_graph_tasks``: tasks in one ``SubmitGraph`` (a ``SubmitLayers`` is
      bounded by the server's ``max_layer_tasks``, as it expands).
    * ``max_key_length``: characters in a key a client defines (by a task, a
      layer's name or a scatter).
    * ``max_connections_per_host`` / ``max_handshakes_per_host``: connections
      one remote IP may hold open, and have still shaking hands.
    * ``max_connections_per_loopback`` / ``max_handshakes_per_loopback``: the
      same for connections from this machine (127.0.0.0/8, ::1).
    """

    max_messages: int = 100_000
    max_graph_tasks: int = 5_000_000
    max_key_length: int = 4096
    max_connections_per_host: int = 512
    max_handshakes_per_host: int = 128
    max_connections_per_loopback: int = 8192
    max_handshakes_per_loopback: int = 2048

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")


class ServerLimits(TypedDict, total=False):
    """The limits that are ``SchedulerServer`` keyword arguments of their own."""

    max_frame_size: int
    handshake_timeout: float
    max_layer_tasks: int


def parse_limits(specs: list[str]) -> tuple[Limits, ServerLimits]:
    """``["max_key_length=1024", "max-frame-size=64MiB"]`` (the CLI's ``--limit``) -> limits.

    Names are those of :class:`Limits`, plus ``max_frame_size`` (bytes, or a size
    such as ``64MiB``), ``handshake_timeout`` (seconds) and ``max_layer_tasks``.
    Raises ``ValueError`` naming what is wrong.
    """
    fields = {f.name for f in dataclasses.fields(Limits)}
    chosen: dict[str, int] = {}
    server: ServerLimits = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        text = text.strip()
        if not sep or not text:
            raise ValueError(f"a limit is NAME=VALUE, not {spec!r}")
        try:
            if name == "max_frame_size":
                server["max_frame_size"] = _positive(parse_bytes(text))
            elif name == "handshake_timeout":
                server["handshake_timeout"] = float(text)
                if not server["handshake_timeout"] > 0:
                    raise ValueError("it must be positive")
            elif name == "max_layer_tasks":
                server["max_layer_tasks"] = _positive(int(text))
            elif name in fields:
                chosen[name] = int(text)
            else:
                known = ", ".join(sorted([*fields, "max_frame_size", "handshake_timeout", "max_layer_tasks"]))
                raise ValueError(f"no such limit (the limits: {known})")
        except ValueError as exc:
            raise ValueError(f"--limit {spec!r}: {exc}") from None
    try:
        return Limits(**chosen), server
    except ValueError as exc:
        raise ValueError(f"--limit: {exc}") from None


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError("it must be positive")
    return value


class RefusalCounts(Counter[str]):
    """How many times each limit refused someone, by limit name (``"max_messages"``, ...)."""


class TlsHandshakeGate:
    """TLS handshakes in progress per remote host, within the handshake limits
    (a :class:`~dsched._comm.TlsGate`): the TLS handshake comes before the
    protocol's, so a flood of them is bounded here, counted in ``refused``."""

    __slots__ = ("_hosts", "limits", "refused")

    def __init__(self, limits: Limits, refused: RefusalCounts) -> None:
        self.limits = limits
        self.refused = refused
        self._hosts: dict[str, int] = {}

    def enter(self, host: str) -> bool:
        loopback = is_loopback(host)
        bound = self.limits.max_handshakes_per_loopback if loopback else self.limits.max_handshakes_per_host
        n = self._hosts.get(host, 0)
        if n >= bound:
            self.refused["max_handshakes_per_loopback" if loopback else "max_handshakes_per_host"] += 1
            return False
        self._hosts[host] = n + 1
        return True

    def leave(self, host: str) -> None:
        n = self._hosts[host] - 1
        if n:
            self._hosts[host] = n
        else:
            del self._hosts[host]


def peer_host(peer: str) -> str:
    """The host part of a comm's peer address (``tcp://10.0.0.5:4242`` -> ``10.0.0.5``)."""
    try:
        return parse_address(peer)[1]
    except ValueError:
        return peer


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _HostCount:
    __slots__ = ("handshaking", "open")

    def __init__(self) -> None:
        self.open = 0
        self.handshaking = 0


class ConnectionLimiter:
    """Open connections and handshakes in progress, per remote host.

    ``admit(host)`` takes a slot (the connection is then handshaking) or returns
    ``(limit name, reason)``; ``handshake_done(host)`` moves it to merely open;
    ``release(host, handshaking)`` gives the slot back when it closes.
    """

    __slots__ = ("_hosts", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._hosts: dict[str, _HostCount] = {}

    def admit(self, host: str) -> tuple[str, str] | None:
        limits = self.limits
        if is_loopback(host):
            max_open, open_name = limits.max_connections_per_loopback, "max_connections_per_loopback"
            max_shaking, shaking_name = limits.max_handshakes_per_loopback, "max_handshakes_per_loopback"
        else:
            max_open, open_name = limits.max_connections_per_host, "max_connections_per_host"
            max_shaking, shaking_name = limits.max_handshakes_per_host, "max_handshakes_per_host"
        count = self._hosts.get(host)
        if count is None:
            count = self._hosts[host] = _HostCount()
        if count.open >= max_open:
            return open_name, f"too many connections from {host}: at most {open_name}={max_open} may be open"
        if count.handshaking >= max_shaking:
            return shaking_name, (
                f"too many handshakes in progress from {host}: at most {shaking_name}={max_shaking}"
            )
        count.open += 1
        count.handshaking += 1
        return None

    def handshake_done(self, host: str) -> None:
        self._hosts[host].handshaking -= 1

    def release(self, host: str, *, handshaking: bool) -> None:
        count = self._hosts[host]
        count.open -= 1
        if handshaking:
            count.handshaking -= 1
        if count.open == 0:
            del self._hosts[host]

    def open_connections(self, host: str) -> int:
        count = self._hosts.get(host)
        return count.open if count is not None else 0
