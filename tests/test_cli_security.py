"""The security options of ``dsched scheduler``, ``dsched worker`` and ``dsched local``.

In process (``CliRunner``) for refusals; as child processes for a TLS cluster
configured from a security file, the environment and the command line at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import trustme
from typer.testing import CliRunner

from dsched import _protocol as p
from dsched._cli import app
from dsched._client import Client
from dsched._handshake import HandshakeRefused
from dsched._probe import SchedulerProbe, wait_for_workers
from dsched._procs import read_scheduler_file
from dsched._security import Security

runner = CliRunner()


def inc(x: int) -> int:
    return x + 1


def _dsched(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "dsched", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
    )


def _stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> str:
    """Stop a child and return its stderr; kill it (and fail) if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.communicate(timeout=15)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{proc.args} did not exit") from None


def _wait_for_address(path: Path, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 20
    while (info := read_scheduler_file(path)) is None:
        assert proc.poll() is None, _stop(proc)
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
    return str(info["address"])


def _said(output: str) -> str:
    """The words of a command's output, without the box a usage error is drawn in."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


def _secret_file(path: Path, secret: str) -> Path:
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


# -- refusals, in process -----------------------------------------------------------------


def test_scheduler_on_every_interface_needs_a_secret_or_insecure() -> None:
    result = runner.invoke(app, ["scheduler", "--host", "0.0.0.0", "--port", "0", "--no-dashboard"], env={})
    said = _said(result.output)
    assert result.exit_code == 1
    assert "refusing to start the scheduler on 0.0.0.0" in said
    assert "--insecure" in said and "--secret-file" in said


def test_worker_peer_listener_on_every_interface_needs_a_secret_or_insecure() -> None:
    result = runner.invoke(app, ["worker", "tcp://127.0.0.1:9", "--host", "0.0.0.0", "--timeout", "1"], env={})
    assert result.exit_code == 1
    assert "worker's peer listener on 0.0.0.0" in _said(result.output) and "--insecure" in _said(result.output)


@pytest.mark.parametrize("command", ["scheduler", "worker", "local"])
def test_bad_security_settings_are_usage_errors(tmp_path: Path, command: str) -> None:
    args = [command, "tcp://127.0.0.1:9"] if command == "worker" else [command]
    result = runner.invoke(app, [*args, "--secret-file", str(tmp_path / "absent")], env={})
    assert result.exit_code == 2
    assert "cannot read the secret file" in _said(result.output)
    both = {"DSCHED_SECRET": "a", "DSCHED_SECRET_FILE": str(_secret_file(tmp_path / "s", "b"))}
    result = runner.invoke(app, args, env=both)
    assert result.exit_code == 2 and "set one of them" in _said(result.output)


def test_no_option_takes_the_secret_itself() -> None:
    for command in ("scheduler", "worker", "local"):
        result = runner.invoke(app, [command, "--secret", "x"], env={})
        assert result.exit_code == 2 and "No such option" in _said(result.output)


def test_insecure_scheduler_on_every_interface(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    proc = _dsched(
        "scheduler", "--host", "0.0.0.0", "--port", "0", "--no-dashboard", "--insecure",
        "--scheduler-file", str(path), env={"DSCHED_SECRET": ""},
    )
    try:
        address = _wait_for_address(path, proc)
        port = address.rsplit(":", 1)[1]

        async def probe() -> list[p.WorkerInfo]:
            async with SchedulerProbe(f"tcp://127.0.0.1:{port}", security=Security(), timeout=10) as probe:
                return await probe.workers()

        assert anyio.run(probe) == []
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err


# -- a TLS cluster from the command line, the environment and a file --------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(directory / "node.pem"))
    cert.private_key_pem.write_to_path(str(directory / "node.key"))
    _secret_file(directory / "file-secret", "secret-from-the-file")
    (directory / "security.toml").write_text(
        'secret_file = "file-secret"\ntls_ca_file = "ca.pem"\ntls_cert = "node.pem"\ntls_key = "node.key"\n'
        "tls_require_client_cert = true\n"
    )
    return directory


def test_tls_cluster_from_file_env_and_command_line(tmp_path: Path, tls_files: Path) -> None:
    cli_secret = _secret_file(tmp_path / "cli-secret", "secret-from-the-command-line")
    path = tmp_path / "scheduler.json"
    # The scheduler: TLS settings from the file, DSCHED_SECRET overrides the file's
    # secret, and --secret-file overrides DSCHED_SECRET.
    scheduler = _dsched(
        "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(path),
        "--security-file", str(tls_files / "security.toml"), "--secret-file", str(cli_secret),
        env={"DSCHED_SECRET": "secret-from-the-environment"},
    )
    worker = None
    try:
        address = _wait_for_address(path, scheduler)
        assert address.startswith("tls://127.0.0.1:")
        # The worker: everything from the environment (the file, then DSCHED_SECRET over it).
        worker = _dsched(
            "worker", address, "--nthreads", "1", "--timeout", "20",
            env={"DSCHED_SECURITY_FILE": str(tls_files / "security.toml"),
                 "DSCHED_SECRET": "secret-from-the-command-line"},
        )
        base = Security.from_file(tls_files / "security.toml")
        right = base.with_secret("secret-from-the-command-line")
        workers = anyio.run(lambda: wait_for_workers(address, lambda ws: len(ws) == 1, timeout=20, security=right))
        assert workers[0].address.startswith("tls://")
        for wrong in ("secret-from-the-environment", "secret-from-the-file"):
            with pytest.raises(HandshakeRefused, match="authentication failed"):
                Client(address, security=base.with_secret(wrong), timeout=10)
        with Client(address, security=right, timeout=10) as client:
            assert client.submit(inc, 1).result(timeout=20) == 2
    finally:
        worker_err = _stop(worker) if worker is not None else ""
        scheduler_err = _stop(scheduler)
    assert scheduler.returncode == 0, scheduler_err
    for secret in ("secret-from-the-command-line", "secret-from-the-environment", "secret-from-the-file"):
        assert secret not in scheduler_err and secret not in worker_err


def test_worker_with_a_wrong_secret_exits_at_once(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    scheduler = _dsched(
        "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(path),
        env={"DSCHED_SECRET": "the-right-one"},
    )
    try:
        address = _wait_for_address(path, scheduler)
        started = time.monotonic()
        worker = _dsched("worker", address, "--timeout", "30", env={"DSCHED_SECRET": "a-wrong-one"})
        err = worker.communicate(timeout=25)[1]
        assert worker.returncode == 1
        assert time.monotonic() - started < 25  # refused: not retried until --timeout
        assert "did not accept this worker" in err and "authentication failed" in err
        assert "a-wrong-one" not in err
    finally:
        _stop(scheduler)


def test_local_writes_its_generated_secret_to_a_private_file() -> None:
    proc = _dsched("local", "--workers", "1", "--threads", "1", "--port", "0", env={"DSCHED_SECRET": ""})
    secret_path: Path | None = None
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().split()[2]
        line = proc.stdout.readline()
        assert line.startswith("Its secret is in "), _stop(proc)
        secret_path = Path(line.split()[4].rstrip(":"))
        assert secret_path.stat().st_mode & 0o077 == 0
        assert secret_path.parent.stat().st_mode & 0o077 == 0
        with pytest.raises(HandshakeRefused):
            Client(address, security=Security(), timeout=10)
        with Client(address, security=Security.load(env={"DSCHED_SECRET_FILE": str(secret_path)})) as client:
            assert client.submit(inc, 1).result(timeout=20) == 2
    finally:
        err = _stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert secret_path is not None and not secret_path.exists()  # removed with the cluster


def test_worker_that_does_not_trust_the_certificate_exits_at_once(tmp_path: Path, tls_files: Path) -> None:
    path = tmp_path / "scheduler.json"
    scheduler = _dsched(
        "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(path),
        "--security-file", str(tls_files / "security.toml"), "--no-tls-require-client-cert",
    )
    try:
        address = _wait_for_address(path, scheduler)
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        started = time.monotonic()
        worker = _dsched(
            "worker", address, "--timeout", "30", "--tls-ca-file", str(other_ca),
            env={"DSCHED_SECRET": "secret-from-the-file"},
        )
        err = worker.communicate(timeout=25)[1]
        assert worker.returncode == 1
        assert time.monotonic() - started < 25  # not retried until --timeout
        assert "certificate verify failed" in err
    finally:
        _stop(scheduler)
