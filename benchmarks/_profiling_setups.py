"""The configurations profiling_bench.py compares, and the dashboard poller.

* ``off``: no sampler in the scheduler or the workers, no dashboard.
* ``on``: a sampler at the default 10 ms interval (or the one asked for) in the
  scheduler and in every worker, the dashboard served, and a :class:`DashboardPoller` thread in the
  benchmark process fetching what an open /status page fetches (and the
  scheduler-profile page's tree every 5 s).
* ``samplers`` and ``dashboard``: each half of ``on`` alone, to tell their costs apart;
  ``scheduler-sampler`` and ``worker-samplers``: the samplers of one side alone.

A setup is either the runtime benchmark's subprocess cluster (``dsched
scheduler`` and ``dsched worker`` processes: workloads (a) and (b)) started
with the configuration's flags, or an in-process cluster (workload (d)).  The
in-process one builds the ``SchedulerServer`` and the ``Worker`` objects here
rather than through ``LocalCluster(processes=False)``: LocalCluster's
in-process backend has no way to pass ``profile_interval``, so its workers
and scheduler always sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _runtime_systems import (
    Cluster,
    ProcessStats,
    _child_env,
    _commands,
    _connect,
    _spawn,
    _stop,
    _tail,
    _wait_for_file,
    _wait_for_workers,
)

__all__ = ["CONFIGS", "DashboardPoller", "PollerProcess", "Setup", "inprocess_setup", "subprocess_setup"]

PROFILE_INTERVAL = 0.01  # the default of SchedulerServer, Worker and the CLI
# config -> (a sampler in the scheduler, samplers in the workers, the dashboard served and polled)
CONFIGS: dict[str, tuple[bool, bool, bool]] = {
    "off": (False, False, False),
    "on": (True, True, True),
    "samplers": (True, True, False),
    "dashboard": (False, False, True),
    "scheduler-sampler": (True, False, False),
    "worker-samplers": (False, True, False),
}
POLL_S = 1.0  # the dashboard's refresh period (dashboard.js: refreshMs)
PROFILE_POLL_EVERY = 5  # polls between fetches of the scheduler's profile tree
STREAM_WINDOW_S = 10  # status.js: the task stream's first poll takes the last 10 s
# LocalCluster's default start_timeout.  In process, with a sampler per worker, 128 workers may take
# minutes to start, or never do: past this, the run fails (saying how many started).
START_TIMEOUT_S = 60.0


@dataclass
class Setup:
    """A running cluster in one configuration, and what the benchmark reads from it."""

    config: str
    cluster: Cluster
    dashboard: str | None  # the /status link, "on" only
    processes: dict[str, ProcessStats]  # name -> stats: CPU per run (the cluster's processes, or this one)
    sampler_stats: Callable[[], list[dict[str, float]]] = field(default=lambda: [])


class DashboardPoller:
    """A thread fetching the /status page's JSON every second, as a browser showing it would.

    Per tick: ``api/status``, ``api/tasks?limit=100``, ``api/task-stream`` (the
    last 10 s first, then only what finished after the newest task seen, as
    status.js does) and ``api/workers?limit=50`` (the page's workers table);
    every ``PROFILE_POLL_EVERY`` ticks also ``api/profile-server?start=-60``
    (the scheduler-profile page's default window).  Failures are counted, not
    raised: the report shows them.
    """

    def __init__(self, status_link: str) -> None:
        self.base = status_link.rsplit("/", 1)[0] + "/"
        self.requests: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.bytes = 0
        self.errors: list[str] = []
        self._since: float = -STREAM_WINDOW_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)

    def __enter__(self) -> DashboardPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _get(self, name: str, query: str = "") -> bytes:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.base + name + query, timeout=30) as response:
                body: bytes = response.read()
        except Exception as exc:  # reported, so a dashboard that failed shows in the table
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return b""
        finally:
            self.requests[name] = self.requests.get(name, 0) + 1
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        self.bytes += len(body)
        return body

    def _tick(self, n: int) -> None:
        self._get("api/status")
        self._get("api/tasks", "?limit=100")
        stream = self._get("api/task-stream", f"?limit=1000&since={self._since!r}")
        if stream:
            stops = [task["stop"] for task in json.loads(stream)["tasks"]]
            if stops:  # negative: still the relative first window
                newest = max(stops)
                self._since = newest if self._since < 0 else max(self._since, newest)
        self._get("api/workers", "?limit=50")
        if n % PROFILE_POLL_EVERY == 0:
            self._get("api/profile-server", "?start=-60")

    def _run(self) -> None:
        deadline = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self._tick(n)
            n += 1
            deadline += POLL_S
            self._stop.wait(max(0.0, deadline - time.monotonic()))

    def summary(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "seconds": dict(self.seconds), "bytes": self.bytes,
                "errors": self.errors[:10], "n_errors": len(self.errors)}


class PollerProcess:
    """A :class:`DashboardPoller` in a process of its own (as a browser would be): ``--poller process``.

    Polls until its stdin closes, then prints its summary as JSON.
    """

    def __init__(self, status_link: str) -> None:
        self.link = status_link
        self._summary: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PollerProcess:
        command = [sys.executable, str(Path(__file__).resolve()), "--poll", self.link]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        stdout, _ = self._process.communicate(timeout=60)  # closes stdin: the poller stops
        self._summary = json.loads(stdout)

    def summary(self) -> dict[str, Any]:
        return self._summary


def _config_flags(config: str, interval: float) -> tuple[list[str], list[str]]:
    """Extra ``dsched scheduler`` and ``dsched worker`` options for the configuration."""
    in_scheduler, in_workers, dashboard = CONFIGS[config]

    def sampling(on: bool) -> list[str]:
        return ["--profile-interval", str(interval if on else 0)]  # 0: no sampler

    served = ["--dashboard-address", "127.0.0.1:0"] if dashboard else ["--no-dashboard"]
    return served + sampling(in_scheduler), sampling(in_workers)


@contextlib.contextmanager
def subprocess_setup(config: str, n_workers: int, interval: float = PROFILE_INTERVAL) -> Iterator[Setup]:
    """The runtime benchmark's subprocess cluster (1 thread per worker), with the configuration's flags."""
    with tempfile.TemporaryDirectory(prefix=f"profiling-bench-{config}-") as tmp:
        workdir = Path(tmp)
        scheduler_file = workdir / "scheduler.json"
        env = _child_env("dsched")
        scheduler_cmd, worker_cmd = _commands("dsched", scheduler_file)
        scheduler_flags, worker_flags = _config_flags(config, interval)
        processes: list[Any] = []
        client: Any = None
        try:
            log_path = workdir / "scheduler.log"
            processes.append(_spawn(scheduler_cmd + scheduler_flags, env, log_path))
            info = _wait_for_file(scheduler_file, processes[0], log_path)
            for i in range(n_workers):
                processes.append(_spawn(worker_cmd + worker_flags, env, workdir / f"worker-{i}.log"))
            client = _connect("dsched", info["address"])
            _wait_for_workers("dsched", client, n_workers)
            stats = {"scheduler": ProcessStats(processes[0].pid)}
            stats.update({f"worker-{i}": ProcessStats(p.pid) for i, p in enumerate(processes[1:])})
            cluster = Cluster("dsched", client, n_workers, stats["scheduler"], _processes=processes)
            dashboard = info.get("dashboard") or None
            if (dashboard is not None) != CONFIGS[config][2]:
                raise RuntimeError(f"{config}: the scheduler file's dashboard entry is {dashboard!r}")
            yield Setup(config, cluster, dashboard, stats)
        except BaseException:
            for i, process in enumerate(processes):
                if process.poll() is not None and process.returncode != 0:
                    name = "scheduler" if i == 0 else f"worker-{i - 1}"
                    print(f"[{config}] {name} exited with {process.returncode}:\n{_tail(workdir / (name + '.log'))}")
            raise
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            _stop(processes)


class _InProcessHost:
    """A SchedulerServer and ``n_workers`` one-thread Workers on one event loop (cf. InProcessBackend)."""

    def __init__(self, n_workers: int, scheduler_interval: float | None, worker_interval: float | None,
                 dashboard: bool) -> None:
        self.n_workers = n_workers
        self.scheduler_interval = scheduler_interval
        self.worker_interval = worker_interval
        self.dashboard = dashboard
        self.server: Any = None
        self.workers: list[Any] = []
        self._stop: Any = None

    async def run(self, *, task_status: Any) -> None:
        import anyio

        from dsched._scheduler_server import SchedulerServer

        self._stop = anyio.Event()
        dashboard = "127.0.0.1:0" if self.dashboard else None
        async with SchedulerServer("127.0.0.1", 0, gc_mode="relaxed", dashboard_address=dashboard,
                                   profile_interval=self.scheduler_interval) as server:
            self.server = server
            async with anyio.create_task_group() as tg:
                started = time.perf_counter()
                with anyio.move_on_after(START_TIMEOUT_S):
                    for i in range(self.n_workers):
                        await tg.start(self._worker, server.address, str(i))
                if len(self.workers) < self.n_workers:
                    raise RuntimeError(f"only {len(self.workers)} of {self.n_workers} in-process workers started in "
                                       f"{time.perf_counter() - started:.0f} s")
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()

    async def _worker(self, address: str, name: str, *, task_status: Any) -> None:
        from dsched._worker import Worker

        # A long connect timeout: with 100+ samplers in one process the loop answers late, and the
        # default 10 s ends the run with a ConnectError that does not say how far the start got.
        async with Worker(address, nthreads=1, name=name, memory_limit=0, connect_timeout=START_TIMEOUT_S,
                          profile_interval=self.worker_interval) as worker:
            self.workers.append(worker)
            task_status.started()
            await worker.serve_forever()

    def request_stop(self) -> None:
        self._stop.set()

    def sampler_stats(self) -> list[dict[str, float]]:
        """Each sampler's counters (one: the scheduler and the workers of a process share it)."""
        candidates = [self.server.diagnostics.sampler]
        candidates += [w._profiler.sampler for w in self.workers if w._profiler is not None]
        samplers = {id(s): s for s in candidates if s is not None}.values()  # each counted once
        out = []
        for sampler in samplers:
            stats = sampler.overhead()
            out.append({"samples": stats.samples, "stacks": stats.stacks, "errors": stats.errors,
                        "busy_s": stats.busy_seconds, "running_s": stats.running_seconds})
        return out


@contextlib.contextmanager
def inprocess_setup(config: str, n_workers: int, interval: float = PROFILE_INTERVAL) -> Iterator[Setup]:
    """Scheduler, ``n_workers`` one-thread workers and the client in this process (workload (d))."""
    import logging

    from dsched._client import Client
    from dsched._loop_thread import LoopThread

    logging.getLogger("dsched").setLevel(logging.WARNING)  # as LocalCluster's silence_logs
    in_scheduler, in_workers, dashboard = CONFIGS[config]
    host = _InProcessHost(n_workers, interval if in_scheduler else None, interval if in_workers else None, dashboard)
    loop = LoopThread("profiling-bench-cluster")
    try:
        future, _ = loop.portal.start_task(host.run, name="profiling-bench-cluster")
        try:
            client = Client(host.server.address)
            try:
                _wait_for_workers("dsched", client, n_workers)
                # The client, the cluster, the samplers and the poller all run here: one process's CPU.
                stats = {"process": ProcessStats(os.getpid())}
                yield Setup(config, Cluster("dsched", client, n_workers), host.server.dashboard_link, stats,
                            host.sampler_stats)
            finally:
                client.close()
        finally:
            loop.portal.call(host.request_stop)
            future.result(timeout=60)
    finally:
        loop.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["--poll"]:  # PollerProcess's child
    with DashboardPoller(sys.argv[2]) as _poller:
        sys.stdin.buffer.read()
    print(json.dumps(_poller.summary()), flush=True)
