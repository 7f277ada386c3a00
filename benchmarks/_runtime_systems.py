"""Start and stop the clusters the runtime benchmark measures, for dsched and for dask.

Two shapes of cluster, the same for both systems:

* ``subprocess_cluster``: the scheduler and each worker in its own process,
  started with the system's command line (``python -m dsched scheduler`` /
  ``python -m dask scheduler``), so that the scheduler's CPU time and memory
  can be read from /proc and nothing else runs in its process.  The client
  runs in the calling process.
* ``inprocess_cluster``: ``LocalCluster(processes=False)``: scheduler,
  workers and client share one process (workload (d)).

A *system* is ``"dsched"``, ``"dask-default"`` or ``"dask-tuned"``; tuned is
dask with ``distributed.scheduler.worker-saturation = inf`` (no root-task
queuing).  For a subprocess scheduler that setting travels as the environment
variable dask reads at import; in process it is set before the cluster is
made.  Either way the scheduler is asked what it got (``saturation``), so a
setting that did not arrive shows in the report instead of skewing it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SYSTEMS", "Cluster", "ProcessStats", "inprocess_cluster", "subprocess_cluster"]

SYSTEMS = ("dsched", "dask-default", "dask-tuned")
BENCH_DIR = Path(__file__).resolve().parent
SATURATION_ENV = "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"
START_TIMEOUT_S = 60.0


class ProcessStats:
    """CPU time and memory of one process: /proc on Linux, psutil elsewhere if installed."""

    _ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._psutil: Any = None
        if not Path(f"/proc/{pid}/stat").exists():
            import psutil  # not a dependency: only needed off Linux

            self._psutil = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (10 ms resolution on Linux)."""
        if self._psutil is not None:
            times = self._psutil.cpu_times()
            return float(times.user + times.system)
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # The command name (field 2) may hold spaces; the fields after it do not.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime

    def memory(self) -> tuple[int, int]:
        """(resident bytes now, peak resident bytes)."""
        if self._psutil is not None:
            info = self._psutil.memory_info()
            return int(info.rss), int(getattr(info, "peak_wset", info.rss))
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]

    def settle(self, window_s: float = 0.3, timeout_s: float = 30.0) -> float:
        """Wait until the process is (nearly) idle: at most one clock tick of CPU in a window.

        Used after releasing a run's results, so that the CPU time read next
        includes the work of forgetting the tasks.  Returns the time waited.
        """
        started = time.perf_counter()
        before = self.cpu_seconds()
        while time.perf_counter() - started < timeout_s:
            time.sleep(window_s)
            now = self.cpu_seconds()
            if now - before <= 1.0 / self._ticks + 1e-9:
                break
            before = now
        return time.perf_counter() - started


@dataclass
class Cluster:
    """A running cluster and a client connected to it."""

    system: str
    client: Any
    n_workers: int
    scheduler: ProcessStats | None = None  # set when the scheduler has its own process
    saturation: float | None = None  # dask's worker-saturation, as the scheduler has it
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _child_env(system: str) -> dict[str, str]:
    env = dict(os.environ)
    # Workers (and dask's scheduler, which unpickles graphs) import _runtime_workloads.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.pop(SATURATION_ENV, None)
    if system == "dask-tuned":
        env[SATURATION_ENV] = "inf"  # dask parses "inf" specially: float("inf") cannot be spelled in YAML/env
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _commands(system: str, scheduler_file: Path) -> tuple[list[str], list[str]]:
    """The scheduler's and one worker's command line."""
    if system == "dsched":
        module = ["-m", "dsched"]
        scheduler = ["scheduler", "--port", "0", "--scheduler-file", str(scheduler_file)]
        worker = ["worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1"]
    else:
        module = ["-m", "dask"]
        scheduler = ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(scheduler_file)]
        # No nanny: one process per worker, as dsched; the nanny only supervises.
        worker = ["worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
                  "--no-dashboard", "--death-timeout", "30"]
    return [sys.executable, *module, *scheduler], [sys.executable, *module, *worker]


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed with the process
    try:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the scheduler exited with {process.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            info: dict[str, Any] = json.loads(path.read_text())
            if info.get("address"):
                return info
        time.sleep(0.05)
    raise RuntimeError(f"no scheduler file after {START_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, n_lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n_lines:])
    except OSError:
        return "(no log)"


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop the workers, then the scheduler (``processes[0]``); kill what does not exit.

    In that order: a dask worker whose scheduler vanished first spends seconds
    trying to reconnect before it exits.
    """
    for group in (processes[1:], processes[:1]):
        for process in group:
            if process.poll() is None:
                process.terminate()
        for process in group:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _connect(system: str, address: str) -> Any:
    if system == "dsched":
        from dsched._client import Client

        return Client(address)
    from distributed import Client as DaskClient

    return DaskClient(address, set_as_default=False)  # type: ignore[no-untyped-call]


def _wait_for_workers(system: str, client: Any, n_workers: int) -> None:
    if hasattr(client, "wait_for_workers"):
        client.wait_for_workers(n_workers, timeout=START_TIMEOUT_S)
        return
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(client.scheduler_info()["workers"]) < n_workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system}: fewer than {n_workers} workers after {START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _dask_saturation(client: Any) -> float:
    value = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
    return float(value)


@contextlib.contextmanager
def subprocess_cluster(system: str, n_workers: int) -> Iterator[Cluster]:
    """Scheduler and ``n_workers`` single-threaded workers as processes of the system's CLI."""
    with tempfile.TemporaryDirectory(prefix=f"runtime-bench-{system}-") as tmp:
        workdir = Path(tmp)
        scheduler_file = workdir / "scheduler.json"
        env = _child_env(system)
        scheduler_cmd, worker_cmd = _commands(system, scheduler_file)
        processes: list[subprocess.Popen[bytes]] = []
        client: Any = None
        try:
            log_path = workdir / "scheduler.log"
            processes.append(_spawn(scheduler_cmd, env, log_path))
            info = _wait_for_file(scheduler_file, processes[0], log_path)
            for i in range(n_workers):
                processes.append(_spawn(worker_cmd, env, workdir / f"worker-{i}.log"))
            client = _connect(system, info["address"])
            _wait_for_workers(system, client, n_workers)
            cluster = Cluster(system, client, n_workers, ProcessStats(processes[0].pid), _processes=processes)
            if system != "dsched":
                cluster.saturation = _dask_saturation(client)
            yield cluster
        except BaseException:
            for i, process in enumerate(processes):
                if process.poll() is not None and process.returncode != 0:
                    name = "scheduler" if i == 0 else f"worker-{i - 1}"
                    print(f"[{system}] {name} exited with {process.returncode}:\n"
                          f"{_tail(workdir / (name + '.log'))}", file=sys.stderr)
            raise
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            _stop(processes)


@contextlib.contextmanager
def inprocess_cluster(system: str, n_workers: int) -> Iterator[Cluster]:
    """``LocalCluster(processes=False, n_workers=n, threads_per_worker=1, memory_limit=0)`` and a client, here.

    No memory limit, for both systems: in one process every dask worker takes
    the whole process's memory for its own, and with 128 workers each one's
    share of the machine (the default limit) is below what the process uses,
    so they pause and the run crawls (minutes for 10,000 tasks).
    """
    if system == "dsched":
        from dsched._client import Client
        from dsched._cluster import LocalCluster

        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False, memory_limit=0)
        try:
            client = Client(cluster)
            try:
                _wait_for_workers(system, client, n_workers)
                yield Cluster(system, client, n_workers)
            finally:
                client.close()
        finally:
            cluster.close()
        return
    import dask
    from distributed import Client as DaskClient
    from distributed import LocalCluster as DaskLocalCluster

    saturation = math.inf if system == "dask-tuned" else dask.config.get("distributed.scheduler.worker-saturation")
    with dask.config.set({"distributed.scheduler.worker-saturation": saturation}):
        dask_cluster = DaskLocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n_workers, threads_per_worker=1, processes=False, memory_limit=0, dashboard_address=None
        )
        with dask_cluster:
            with DaskClient(dask_cluster, set_as_default=False) as client:  # type: ignore[no-untyped-call]
                _wait_for_workers(system, client, n_workers)
                yield Cluster(system, client, n_workers, saturation=_dask_saturation(client))
