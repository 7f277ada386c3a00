"""``dsched worker``: run a worker for a scheduler until SIGINT, SIGTERM or the scheduler leaves."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer

from dsched import _cli_security as cs
from dsched._cli_signals import cancel_on_signal, signal_name
from dsched._comm import CommClosedError, ConnectError, format_address, parse_address
from dsched._handshake import HandshakeRefused
from dsched._procs import adopt_parent_environment, read_scheduler_file
from dsched._sampler_alarm import use_signal_by_default
from dsched._security import SecurityError
from dsched._sizes import cpu_count, parse_memory_limit, parse_resources
from dsched._worker_memory import DEFAULT_PAUSE, DEFAULT_SPILL, DEFAULT_TARGET, DEFAULT_TERMINATE, parse_fraction

if TYPE_CHECKING:
    from dsched._worker import Worker

__all__ = ["WorkerStartError", "register", "run_worker"]

logger = logging.getLogger("dsched.worker")


class WorkerStartError(Exception):
    """The worker could not join its scheduler (the message says why, for humans)."""


def normalize_address(address: str) -> str:
    """``"host:port"`` -> ``"tcp://host:port"``; ``ValueError`` for what is not an address."""
    scheme, host, port = parse_address(address)
    return format_address(scheme, host, port)


async def _address_from_file(path: Path, deadline: float) -> str:
    """Wait for the scheduler file to appear (the scheduler may be starting too)."""
    logged = False
    while True:
        info = read_scheduler_file(path)
        if info is not None:
            return str(info["address"])
        if time.monotonic() > deadline:
            raise WorkerStartError(f"no scheduler file at {path} (waited for it to appear)")
        if not logged:
            logger.info("waiting for the scheduler file %s", path)
            logged = True
        await anyio.sleep(0.05)


async def _enter_worker(make: type[Worker], address: str, deadline: float, **kwargs: object) -> Worker:
    """Create and enter a Worker, retrying while the scheduler cannot be reached."""
    delay = 0.05
    while True:
        worker = make(address, **kwargs)  # type: ignore[arg-type]
        try:
            return await worker.__aenter__()
        except HandshakeRefused as exc:  # e.g. a wrong secret: retrying will not help
            raise WorkerStartError(f"the scheduler at {address} did not accept this worker: {exc}") from None
        except ConnectError as exc:
            if _certificate_refused(exc):  # the scheduler's certificate is not trusted: it will not change
                raise WorkerStartError(f"cannot reach the scheduler at {address}: {exc}") from None
            if time.monotonic() + delay > deadline:
                raise WorkerStartError(f"cannot reach the scheduler at {address}: {exc}") from None
            logger.info("cannot reach the scheduler at %s yet (%s): retrying", address, exc)
        except CommClosedError as exc:  # reached, but refused or hung up: retrying will not help
            raise WorkerStartError(f"the scheduler at {address} did not accept this worker: {exc}") from None
        except OSError as exc:  # e.g. the worker's own port is taken
            raise WorkerStartError(f"cannot start the worker: {exc.strerror or exc}") from None
        await anyio.sleep(delay)
        delay = min(1.0, delay * 2)


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a failed connection was a TLS certificate that did not verify."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def run_worker(
    address: str | None,
    scheduler_file: Path | None,
    timeout: float,
    **worker_kwargs: object,
) -> None:
    """Join the scheduler, serve until a signal or the scheduler leaves, then retire."""
    from dsched._worker import Worker

    deadline = time.monotonic() + timeout
    if address is None:
        assert scheduler_file is not None
        address = await _address_from_file(scheduler_file, deadline)
    worker = await _enter_worker(Worker, address, deadline, **worker_kwargs)
    received: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope, received)
            await worker.serve_forever()
            tg.cancel_scope.cancel()
    finally:
        why = f"stopped by {signal_name(received[0])}" if received else "the scheduler connection ended"
        logger.info("worker at %s: %s; retiring", worker.address, why)
        # Not in a shielded scope of our own: the worker's task group must be left
        # from the scope it was entered in (its close() shields itself).
        await worker.__aexit__(None, None, None)


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        address: Annotated[
            str | None,
            typer.Argument(help="The scheduler's address, such as tcp://127.0.0.1:8786 (or use --scheduler-file)."),
        ] = None,
        nthreads: Annotated[
            int | None, typer.Option(min=1, help="Threads running tasks (default: one per core).")
        ] = None,
        name: Annotated[str, typer.Option(help="A name for the worker (unique in the cluster).")] = "",
        memory_limit: Annotated[
            str,
            typer.Option(
                help="Memory for this worker: bytes, a size (4GiB, 500MB), a fraction of the machine's "
                "memory (0.5), 'auto' (the machine's memory times this worker's share of the cores) or 0 (no limit).",
            ),
        ] = "auto",
        resources: Annotated[
            str, typer.Option(help='Abstract resources tasks may require, as "GPU=2,MEM=10e9".')
        ] = "",
        host: Annotated[
            str,
            typer.Option(
                help="Interface to serve data to peers on (beyond loopback a secret is required, or --insecure).",
            ),
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="Port to serve data to peers on; 0 picks one.")] = 0,
        scheduler_file: Annotated[
            Path | None,
            typer.Option(help="Read the scheduler's address from this file (waits for it to appear).", dir_okay=False),
        ] = None,
        timeout: Annotated[
            float,
            typer.Option(min=0.0, help="Seconds to keep trying to reach the scheduler (and to wait for its file)."),
        ] = 30.0,
        profile_interval: Annotated[
            float,
            typer.Option(min=0.0, help="Seconds between samples of the task threads' stacks (0: no profiler)."),
        ] = 0.01,
        local_directory: Annotated[
            Path | None,
            typer.Option(help="Where to spill results to disk (a temporary directory inside it, removed on exit).",
                         file_okay=False),
        ] = None,
        memory_target: Annotated[
            str,
            typer.Option(help="Spill least recently used results to disk once they take this fraction of "
                         "--memory-limit (false: never by their size)."),
        ] = str(DEFAULT_TARGET),
        memory_spill: Annotated[
            str,
            typer.Option(help="Spill results until under --memory-target once the process's memory passes this "
                         "fraction of --memory-limit (false: off)."),
        ] = str(DEFAULT_SPILL),
        memory_pause: Annotated[
            str,
            typer.Option(help="Pause (start no new task, keep serving data) while the process's memory is past "
                         "this fraction of --memory-limit (false: never)."),
        ] = str(DEFAULT_PAUSE),
        memory_terminate: Annotated[
            str,
            typer.Option(help="Log an error when the process's memory passes this fraction of --memory-limit "
                         "(false: off)."),
        ] = str(DEFAULT_TERMINATE),
        secret_file: cs.SecretFileOption = None,
        tls_ca_file: cs.TlsCaFileOption = None,
        tls_cert: cs.TlsCertOption = None,
        tls_key: cs.TlsKeyOption = None,
        tls_require_client_cert: cs.TlsRequireClientCertOption = None,
        tls_check_hostname: cs.TlsCheckHostnameOption = None,
        require_encryption: cs.RequireEncryptionOption = None,
        security_file: cs.SecurityFileOption = None,
        insecure: cs.InsecureOption = False,
    ) -> None:
        """Run a worker: it runs tasks for a scheduler until SIGINT (Ctrl-C), SIGTERM or the scheduler stops.

        On SIGINT or SIGTERM the worker retires: it tells the scheduler, which
        moves its work elsewhere.
        """
        adopt_parent_environment()
        if (address is None) == (scheduler_file is None):
            raise typer.BadParameter("give the scheduler's ADDRESS or --scheduler-file (one of the two)")
        try:
            if address is not None:
                address = normalize_address(address)
            threads = nthreads if nthreads is not None else cpu_count()
            limit = parse_memory_limit(memory_limit, threads)
            resource_map = parse_resources(resources)
            fractions = {
                "memory_target_fraction": parse_fraction(memory_target, "--memory-target"),
                "memory_spill_fraction": parse_fraction(memory_spill, "--memory-spill"),
                "memory_pause_fraction": parse_fraction(memory_pause, "--memory-pause"),
                "memory_terminate_fraction": parse_fraction(memory_terminate, "--memory-terminate"),
            }
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        security = cs.security_from_options(
            secret_file=secret_file, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key,
            tls_require_client_cert=tls_require_client_cert, tls_check_hostname=tls_check_hostname,
            require_encryption=require_encryption, security_file=security_file,
        )
        kwargs: dict[str, object] = dict(
            nthreads=threads, name=name, memory_limit=limit, resources=resource_map, host=host, port=port,
            profile_interval=profile_interval or None, security=security, insecure=insecure,
            local_directory=str(local_directory) if local_directory is not None else None, **fractions,
        )
        use_signal_by_default()  # this process's main thread is the worker's loop: dsched owns it
        try:
            anyio.run(_main, address, scheduler_file, timeout, kwargs, backend="asyncio")
        except (WorkerStartError, SecurityError) as exc:
            typer.echo(f"dsched worker: {exc}", err=True)
            raise typer.Exit(1) from None


async def _main(address: str | None, scheduler_file: Path | None, timeout: float, kwargs: dict[str, object]) -> None:
    await run_worker(address, scheduler_file, timeout, **kwargs)
