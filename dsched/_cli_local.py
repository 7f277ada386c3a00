"""``dsched local``: a scheduler and its workers from one command, until Ctrl-C."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from dsched import _cli_security as cs
from dsched._cli_signals import STOP_SIGNALS, signal_name
from dsched._cluster import ClusterStartError, LocalCluster
from dsched._procs import write_scheduler_file
from dsched._security import SecurityError
from dsched._sizes import format_bytes

__all__ = ["register"]

logger = logging.getLogger("dsched.cluster")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _wait_for_stop(cluster: LocalCluster) -> tuple[str, bool]:
    """Block until SIGINT/SIGTERM (True) or the scheduler process ends (False); say which."""
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        scheduler = cluster.scheduler_process
        while not stop.wait(0.25):
            if scheduler is not None and scheduler.poll() is not None:
                return f"the scheduler exited with code {scheduler.returncode}", False
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return f"stopped by {signal_name(received[0])}", True


def _write_secret(secret: str) -> Path:
    """The generated secret in a new file only this user can read (in a private directory)."""
    directory = Path(tempfile.mkdtemp(prefix="dsched-local-"))  # mode 0700
    path = directory / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return path


def register(app: typer.Typer) -> None:
    @app.command()
    def local(
        workers: Annotated[int | None, typer.Option(min=0, help="Worker processes (default: about one thread per core in total).")] = None,
        threads: Annotated[int | None, typer.Option(min=1, help="Threads per worker (default: fills the cores).")] = None,
        host: Annotated[str, typer.Option(help="Interface the scheduler and workers listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="The scheduler's port; 0 picks a free one.")] = 8786,
        memory_limit: Annotated[
            str, typer.Option(help="Memory per worker: a size (4GiB), a fraction, 'auto' (an equal share) or 0 (no limit).")
        ] = "0",
        scheduler_file: Annotated[
            Path | None, typer.Option(help="Also write the scheduler's address to this JSON file.", dir_okay=False)
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
    ) -> None:
        """Run a scheduler and workers on this machine, each its own process, until Ctrl-C.

        Prints the scheduler's address; connect with Client("tcp://HOST:PORT").
        Without a configured secret (and without --insecure) the cluster gets a
        random one, written to a file only you can read, whose path is printed:
        clients find it with DSCHED_SECRET_FILE=PATH.
        """
        security = cs.security_from_options(
            secret_file=secret_file, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key,
            tls_require_client_cert=tls_require_client_cert, tls_check_hostname=tls_check_hostname,
            require_encryption=require_encryption, security_file=security_file,
        )
        generated = not security.secret and not insecure
        try:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=threads, host=host, scheduler_port=port,
                memory_limit=memory_limit, silence_logs=logging.getLogger().getEffectiveLevel(),
                security=security, insecure=insecure,
            )
        except SecurityError as exc:
            typer.echo(f"dsched local: {exc}", err=True)
            raise typer.Exit(1) from None
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        except ClusterStartError as exc:
            typer.echo(f"dsched local: the cluster did not start: {exc}", err=True)
            raise typer.Exit(1) from None
        secret_path = _write_secret(cluster.security.secret) if generated else None
        with cluster:
            if scheduler_file is not None:
                write_scheduler_file(scheduler_file, {"type": "Scheduler", "address": cluster.scheduler_address})
            memory = f", {format_bytes(cluster.memory_limit)} each" if cluster.memory_limit else ""
            typer.echo(
                f"Scheduler at {cluster.scheduler_address} with {_plural(len(cluster.workers), 'worker')} "
                f"x {_plural(cluster.threads_per_worker, 'thread')}{memory}. Press Ctrl-C to stop."
            )
            if secret_path is not None:
                typer.echo(f"Its secret is in {secret_path}: connect with DSCHED_SECRET_FILE={secret_path} set.")
            try:
                why, clean = _wait_for_stop(cluster)
            finally:
                if secret_path is not None:
                    shutil.rmtree(secret_path.parent, ignore_errors=True)
            logger.info("dsched local: %s; stopping the workers and the scheduler", why)
        if scheduler_file is not None:
            scheduler_file.unlink(missing_ok=True)
        if not clean:
            typer.echo(f"dsched local: {why}", err=True)
            raise typer.Exit(1)
