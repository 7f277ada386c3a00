"""The ``dsched`` command line: help, errors, and the long-running commands as real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from dsched import _protocol as p
from dsched._cli import app, version_string
from dsched._comm import ConnectError, connect, parse_address
from dsched._probe import SchedulerProbe, wait_for_workers
from dsched._security import Security

runner = CliRunner()


def dsched(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    """``python -m dsched ARGS`` as a child process with text pipes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "dsched", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,  # type: ignore[call-overload]
    )


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM, timeout: float = 15) -> tuple[str, str]:
    """Send ``signum`` and collect the output; kill (and fail) if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{proc.args} did not exit after {signal.Signals(signum).name}") from None


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, stop(proc)
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def workers_of(address: str, n: int, security: Security | None = None) -> list[p.WorkerInfo]:
    return anyio.run(lambda: wait_for_workers(address, lambda ws: len(ws) == n, timeout=15, security=security))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refuses_connections(address: str) -> bool:
    async def attempt() -> bool:
        _, host, port = parse_address(address)
        try:
            comm = await connect(host, port, timeout=2)
        except ConnectError:
            return True
        await comm.aclose()
        return False

    return anyio.run(attempt)


# --- in-process, with CliRunner -------------------------------------------------------


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == version_string()
    assert result.output.startswith("dsched ")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("scheduler", ["--host", "--port", "--dashboard-address", "--no-dashboard", "--profile-interval", "--scheduler-file"]),
        ("worker", ["--nthreads", "--name", "--memory-limit", "--resources", "--host", "--scheduler-file", "--profile-interval"]),
        ("local", ["--workers", "--threads", "--port", "--memory-limit", "--scheduler-file"]),
        ("demo", ["--tasks", "--workers", "--threads"]),
    ],
)
def test_subcommand_help_names_every_option(command: str, options: list[str]) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output
    listing = runner.invoke(app, ["--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert command in listing.output


def test_worker_with_unreachable_scheduler_exits_with_a_message() -> None:
    address = f"tcp://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = runner.invoke(app, ["worker", address, "--nthreads", "1", "--timeout", "0.3"])
    assert result.exit_code == 1
    assert f"dsched worker: cannot reach the scheduler at {address}" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 10  # it gave up, as told, rather than hanging


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "ADDRESS or --scheduler-file"),
        (["tcp://127.0.0.1:1", "--memory-limit", "lots"], "not a size"),
        (["tcp://127.0.0.1:1", "--resources", "GPU"], "bad resource"),
        (["not-an-address"], "not of the form"),
        (["tcp://127.0.0.1:1", "--nthreads", "0"], "nthreads"),
        (["tcp://127.0.0.1:1", "--memory-pause", "lots"], "--memory-pause must be a fraction"),
        (["tcp://127.0.0.1:1", "--memory-target", "-0.5"], "--memory-target must be above 0"),
    ],
)
def test_worker_refuses_bad_options(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["worker", *args], terminal_width=200)
    assert result.exit_code == 2
    assert message in result.output


# --- real processes -------------------------------------------------------------------


def test_scheduler_and_worker_meet_through_the_scheduler_file(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    # The worker starts first and waits for the file to appear.
    worker = dsched("--log-level", "info", "worker", "--scheduler-file", str(path), "--nthreads", "2", "--name", "w1")
    scheduler = dsched(
        "--log-level", "info", "scheduler", "--port", "0", "--scheduler-file", str(path), "--dashboard-address", ":0"
    )
    try:
        info = wait_for_file(path, scheduler)
        address = str(info["address"])
        assert address.startswith("tcp://127.0.0.1:") and info["pid"] == scheduler.pid
        dashboard = str(info["dashboard"])
        assert dashboard.startswith("http://127.0.0.1:") and dashboard.endswith("/status")
        with urllib.request.urlopen(dashboard.replace("/status", "/health"), timeout=10) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        (registered,) = workers_of(address, 1)
        assert registered.name == "w1" and registered.nthreads == 2
    finally:
        sched_out, sched_err = stop(scheduler, signal.SIGINT)
        try:  # the worker leaves by itself once its scheduler is gone
            worker_out, worker_err = worker.communicate(timeout=15)
        finally:
            if worker.poll() is None:
                stop(worker, signal.SIGKILL)
    # The scheduler stopped cleanly, said goodbye, and removed its file; the worker followed.
    assert scheduler.returncode == 0, sched_err
    assert worker.returncode == 0, worker_err
    assert "the scheduler is shutting down" in worker_err
    assert not path.exists()
    assert "stopped by SIGINT" in sched_err
    assert f"dashboard at {dashboard}" in sched_err  # printed at start-up
    assert "Traceback" not in sched_err + worker_err


def test_worker_retires_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    scheduler = dsched("scheduler", "--port", "0", "--scheduler-file", str(path))
    try:
        address = str(wait_for_file(path, scheduler)["address"])
        worker = dsched("worker", address, "--nthreads", "1", "--name", "leaving")
        try:
            workers_of(address, 1)
        finally:
            _, worker_err = stop(worker, signal.SIGTERM)
        assert worker.returncode == 0, worker_err
        assert "stopped by SIGTERM; retiring" in worker_err
        assert workers_of(address, 0) == []  # the scheduler removed it
    finally:
        stop(scheduler)
    assert scheduler.returncode == 0


def test_scheduler_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = dsched("scheduler", "--port", str(port))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"dsched scheduler: cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_local_runs_a_cluster_until_ctrl_c() -> None:
    proc = dsched("local", "--workers", "2", "--threads", "1", "--port", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Scheduler at tcp://127.0.0.1:") and "2 workers x 1 thread." in line, stop(proc)
        address = line.split()[2]
        # The cluster's generated secret, in a file only this user can read.
        secret_line = proc.stdout.readline()
        assert secret_line.startswith("Its secret is in "), stop(proc)
        secret_file = secret_line.split()[4].rstrip(":")
        workers = workers_of(address, 2, Security.load(env={"DSCHED_SECRET_FILE": secret_file}))
    finally:
        _, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    # Nothing listens any more: the scheduler and both workers are gone.
    assert refuses_connections(address)
    assert all(refuses_connections(w.address) for w in workers)


def test_probe_is_refused_by_a_wrong_protocol_peer() -> None:
    """The probe reports a refusal (not a hang) when the other side is not a scheduler."""

    async def main() -> None:
        async def refuse(comm: object) -> None:
            await comm.send_frame(p.encode_handshake(p.Refused("no clients here")))  # type: ignore[attr-defined]

        from dsched._comm import CommClosedError, listen

        async with listen("127.0.0.1", 0, refuse) as listener:  # type: ignore[arg-type]
            with pytest.raises(CommClosedError, match="no clients here"):
                async with SchedulerProbe(listener.address, timeout=5):
                    pass

    anyio.run(main)


def test_dsched_demo_end_to_end() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(  # the README's first command, made small
        [sys.executable, "-P", "-m", "dsched", "demo", "--tasks", "2000"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dsched demo: 1,999 tasks" in proc.stdout
    assert "is correct" in proc.stdout and "tasks/s" in proc.stdout
    # Not a terminal: the progress bar prints lines, ending at 100%.
    assert proc.stderr.rstrip().splitlines()[-1].startswith("[" + "#" * 30 + "] 100%")


def test_demo_plan_and_progress_bar() -> None:
    from dsched._demo import ProgressBar, plan_demo

    for tasks in (3, 10, 101, 2000, 100_000):
        plan = plan_demo(tasks)
        assert tasks - 3 <= plan.total_tasks <= tasks
        assert plan.expected == sum(i * i for i in range(1, plan.n_inputs + 1))
    terminal = io.StringIO()
    bar = ProgressBar(200, terminal, tty=True)
    bar.update(50)
    bar.update(100)
    assert terminal.getvalue().count("\r") == 2 and "\n" not in terminal.getvalue()
    assert "100/200 tasks" in terminal.getvalue() and "50%" in terminal.getvalue()
    bar.finish(200)
    assert terminal.getvalue().endswith("\n") and "[" + "#" * 30 + "] 100%" in terminal.getvalue()
    piped = io.StringIO()
    bar = ProgressBar(200, piped, tty=False, interval=3600)
    for done in range(0, 200, 10):
        bar.update(done)
    bar.finish(200)
    lines = piped.getvalue().splitlines()
    assert "\r" not in piped.getvalue()
    assert len(lines) == 2 and "0/200" in lines[0] and "200/200" in lines[1]
