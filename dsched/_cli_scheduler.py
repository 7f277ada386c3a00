"""``dsched scheduler``: run a scheduler until SIGINT or SIGTERM."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import anyio
import typer

import sched_core as sc
from sched_core._scheduler import DEFAULT_ALLOWED_FAILURES
from dsched import _cli_security as cs
from dsched._cli_signals import cancel_on_signal, signal_name
from dsched._dashboard_server import parse_dashboard_address
from dsched._limits import parse_limits
from dsched._sizes import parse_bytes
from dsched._procs import adopt_parent_environment, remove_scheduler_file, write_scheduler_file
from dsched._sampler_alarm import use_signal_by_default
from dsched._scheduler_server import SchedulerServer
from dsched._security import Security, SecurityError

__all__ = ["register", "serve_scheduler"]

logger = logging.getLogger("dsched.scheduler")


async def serve_scheduler(
    host: str,
    port: int,
    scheduler_file: Path | None,
    dashboard_address: str | None = None,
    profile_interval: float | None = 0.01,
    record: Path | None = None,
    record_max_bytes: int | None = None,
    allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
    *,
    security: Security | None = None,
    insecure: bool = False,
    record_dir: Path | None = None,
    limits: list[str] | None = None,
) -> None:
    """Serve until a stop signal; write and remove the scheduler file around that.

    ``limits``: ``NAME=VALUE`` pairs (``--limit``, see :func:`dsched._limits.parse_limits`).
    """
    chosen, server_limits = parse_limits(limits or [])
    received: list[int] = []
    async with SchedulerServer(
        host, port, state=sc.SchedulerState(allowed_failures=allowed_failures),
        dashboard_address=dashboard_address, profile_interval=profile_interval or None,
        record=str(record) if record is not None else None, record_max_bytes=record_max_bytes,
        record_dir=str(record_dir) if record_dir is not None else None,
        security=security, insecure=insecure, limits=chosen, **server_limits,
    ) as server:
        logger.info("scheduler %s at %s", server.scheduler_id, server.address)
        if server.dashboard_link:
            logger.info("dashboard at %s", server.dashboard_link)
        if scheduler_file is not None:
            write_scheduler_file(
                scheduler_file,
                {
                    "type": "Scheduler",
                    "id": server.scheduler_id,
                    "address": server.address,
                    "dashboard": server.dashboard_link,
                    "pid": os.getpid(),
                    "started": time.time(),
                },
            )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_signal, tg.cancel_scope, received)
            reason = f"stopped by {signal_name(received[0])}" if received else "stopped"
            # Leaving the server's block tells every worker and client (Close).
            logger.info(
                "scheduler %s: closing the connections of %d workers and %d clients",
                reason, len(server.workers), len(server.clients),
            )
        finally:
            if scheduler_file is not None:
                remove_scheduler_file(scheduler_file, server.address)


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=False)
    def scheduler(
        host: Annotated[
            str,
            typer.Option(
                help="Interface to listen on (0.0.0.0 for every interface: then a secret is required, "
                "or --insecure).",
            ),
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8786,
        dashboard: Annotated[
            bool, typer.Option(help="Serve the dashboard (HTTP status pages, JSON API, /metrics, profiles).")
        ] = True,
        dashboard_address: Annotated[
            str,
            typer.Option(
                help="Where the dashboard listens, HOST:PORT (loopback unless told otherwise; "
                "a port in use is replaced by a free one).",
            ),
        ] = "127.0.0.1:8787",
        profile_interval: Annotated[
            float,
            typer.Option(min=0.0, help="Seconds between samples of the event loop's stack (0: no profiler)."),
        ] = 0.01,
        record: Annotated[
            Path | None,
            typer.Option(
                help="Record the core's events to this file from the start, for `dsched replay` "
                "(stop with `dsched record stop`).",
                dir_okay=False,
            ),
        ] = None,
        record_max_bytes: Annotated[
            str, typer.Option(help="Stop recording before the file passes this size (bytes or 4GiB, 500MB).")
        ] = "1GiB",
        record_dir: Annotated[
            Path | None,
            typer.Option(
                help="Where recordings started on request (`dsched record start`) go "
                "[default: beside --record's file, else $DSCHED_RECORD_DIR, else <tmp>/dsched-recordings].",
                file_okay=False,
            ),
        ] = None,
        allowed_failures: Annotated[
            int,
            typer.Option(
                min=0,
                help="How many workers may die while running a task before the task is erred "
                "with KilledWorker (a task that crashes its worker every time stops there).",
            ),
        ] = DEFAULT_ALLOWED_FAILURES,
        scheduler_file: Annotated[
            Path | None,
            typer.Option(
                help="Write the scheduler's address to this JSON file once it listens "
                "(workers and clients can read it; removed on exit).",
                dir_okay=False,
            ),
        ] = None,
        secret_file: cs.SecretFileOption = None,
        tls_ca_file: cs.TlsCaFileOption = None,
        tls_cert: cs.TlsCertOption = None,
        tls_key: cs.TlsKeyOption = None,
        tls_require_client_cert: cs.TlsRequireClientCertOption = None,
        tls_check_hostname: cs.TlsCheckHostnameOption = None,
        require_encryption: cs.RequireEncryptionOption = None,
        security_file: cs.SecurityFileOption = None,
        insecure: cs.InsecureOption = False,
        limit: Annotated[
            list[str] | None,
            typer.Option(
                help="A limit on what one peer may send or hold open, NAME=VALUE (repeat for several), e.g. "
                "max_key_length=1024, max_connections_per_host=64, max_frame_size=64MiB: see docs/operations.md.",
            ),
        ] = None,
    ) -> None:
        """Run a scheduler: it accepts workers and clients until SIGINT (Ctrl-C) or SIGTERM.

        Workers join with `dsched worker ADDRESS`; clients connect with
        `Client("tcp://HOST:PORT")`.
        """
        adopt_parent_environment()
        security = cs.security_from_options(
            secret_file=secret_file, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key,
            tls_require_client_cert=tls_require_client_cert, tls_check_hostname=tls_check_hostname,
            require_encryption=require_encryption, security_file=security_file,
        )
        try:
            parse_dashboard_address(dashboard_address)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--dashboard-address") from None
        address = dashboard_address if dashboard else None
        try:
            max_bytes = parse_bytes(record_max_bytes)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--record-max-bytes") from None
        try:
            parse_limits(limit or [])
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--limit") from None
        use_signal_by_default()  # this process's main thread is the scheduler's loop: dsched owns it
        try:
            anyio.run(
                functools.partial(
                    serve_scheduler, security=security, insecure=insecure, record_dir=record_dir, limits=limit
                ),
                host, port, scheduler_file, address, profile_interval, record, max_bytes,
                allowed_failures, backend="asyncio",
            )
        except SecurityError as exc:
            typer.echo(f"dsched scheduler: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            typer.echo(f"dsched scheduler: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
