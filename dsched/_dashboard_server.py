"""Serving the dashboard: uvicorn on the scheduler's own event loop, on a port of its own.

On the same loop, the dashboard reads the scheduler's state between ticks
without locks or copies; every request does bounded work (see
``dsched._dashboard_source``), so a browser polling a few pages costs the
scheduler little.  uvicorn is told to leave the process's signals alone: the
scheduler (or the user's program, for an in-process cluster) owns them.

Access: on loopback the dashboard is open (to this machine's host names only).
Beyond loopback it needs the scheduler's secret when there is one (see
``dsched.dashboard._app``: a bearer token, or ``?token=`` once in a browser,
which sets a cookie), and it is served over HTTPS when the scheduler has a
TLS certificate.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Generator
from typing import TYPE_CHECKING

import anyio
import uvicorn
from anyio.abc import TaskGroup, TaskStatus
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware

from dsched._security import Security, SecurityError, is_loopback

if TYPE_CHECKING:
    from dsched._scheduler_server import SchedulerServer

__all__ = ["DashboardServer", "parse_dashboard_address", "start_dashboard"]

logger = logging.getLogger("dsched.dashboard")

DEFAULT_PORT = 8787


def parse_dashboard_address(address: str) -> tuple[str, int]:
    """``"host:port"``, ``":port"``, ``"port"`` or ``"host"`` -> (host, port); loopback by default."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = ("", address) if address.isdigit() else (address, str(DEFAULT_PORT))
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"the dashboard port must be a number, not {port!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"the dashboard port must be in 0-65535, not {number}")
    return host, number


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the process's signals belong to the scheduler (or the user's program), not to uvicorn


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DashboardServer:
    """The dashboard's HTTP server; ``run`` serves until ``close``."""

    def __init__(
        self, app: Starlette, host: str, port: int, *, fall_back: bool = True, security: Security | None = None
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.fall_back = fall_back  # a port in use: take another rather than fail
        # HTTPS with the scheduler's certificate; never mutual TLS: browsers have no client certificates.
        self.tls_cert = security.tls_cert if security is not None else None
        self.tls_key = security.tls_key if security is not None else None
        self._server: _EmbeddedServer | None = None

    @property
    def link(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}/status"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            sock = _bind(self.host, self.port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not self.fall_back or self.port == 0:
                raise
            logger.warning("dashboard port %d is in use; taking another one", self.port)
            sock = _bind(self.host, 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", access_log=False,
            ssl_certfile=self.tls_cert, ssl_keyfile=self.tls_key,
        )
        self._server = _EmbeddedServer(config)
        task_status.started()
        try:
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


async def start_dashboard(server: SchedulerServer, tg: TaskGroup, address: str) -> DashboardServer:
    """Serve ``server``'s dashboard at ``address`` (``host:port``) in ``tg``; the running server.

    Beyond loopback the dashboard needs the cluster's secret; a scheduler without
    one may expose it only if it was told ``insecure`` (then with a warning).
    Raises ``SecurityError`` otherwise.
    """
    from dsched._dashboard_source import SchedulerSource
    from dsched.dashboard import create_app

    host, port = parse_dashboard_address(address)
    loopback = is_loopback(host)
    if not loopback and not server.auth and not server.insecure:
        raise SecurityError(
            f"refusing to serve the dashboard on {host} without a secret: anyone who can reach it could read "
            "the cluster's state and profile the scheduler.  Give the cluster a secret (--secret-file, "
            "DSCHED_SECRET), keep the dashboard on 127.0.0.1 (reach it through an SSH tunnel), or pass --insecure"
        )
    app = create_app(SchedulerSource(server), secret=None if loopback or not server.auth else server.auth)
    if loopback:
        # Open on loopback, so only this machine's names may reach it: a web page whose own host
        # name was pointed at 127.0.0.1 (DNS rebinding) cannot read or drive the dashboard.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]", host])
    elif not server.auth:
        logger.warning(
            "the dashboard listens on %s without a secret: anyone who can reach that port can read the "
            "cluster's state and profile the scheduler (bind it to 127.0.0.1 and use an SSH tunnel, or set a secret)",
            address,
        )
    dashboard = DashboardServer(app, host, port, security=server.security)
    await tg.start(dashboard.run)
    return dashboard
