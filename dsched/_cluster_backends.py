"""How a :class:`~dsched._cluster.LocalCluster` runs its scheduler and workers.

Two backends with one shape: ``await tg.start(backend.run)`` starts the
scheduler and the first workers and returns once every worker is registered;
``run`` then hosts them until :meth:`request_stop`, and stops them before it
returns.  ``scale(n)`` may be awaited from any task of the same event loop.

* :class:`ProcessBackend`: ``python -m dsched scheduler`` and one
  ``python -m dsched worker`` per worker, as child processes.
* :class:`InProcessBackend`: a :class:`~dsched._scheduler_server.SchedulerServer`
  and :class:`~dsched._worker.Worker` objects in this event loop.

Each runs in one long-lived task because anyio's cancel scopes (and so the
servers' task groups) must be entered and left by the same task.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus

import sched_core as sc
from sched_core._scheduler import DEFAULT_ALLOWED_FAILURES
from dsched import _protocol as p
from dsched._probe import wait_for_workers
from dsched._procs import ChildProcess, read_scheduler_file, stop_all
from dsched._scheduler_server import SchedulerServer
from dsched._worker_memory import DEFAULT_PAUSE, DEFAULT_SPILL, DEFAULT_TARGET, DEFAULT_TERMINATE
from dsched._security import Security

if TYPE_CHECKING:
    from dsched._worker import Worker

__all__ = [
    "ClusterStartError", "ClusterStartTimeout", "InProcessBackend", "ProcessBackend", "SchedulerOptions", "WorkerOptions",
]


class ClusterStartError(RuntimeError):
    """The scheduler or a worker of a local cluster failed to start."""


class ClusterStartTimeout(ClusterStartError, TimeoutError):
    """The scheduler or a worker of a local cluster did not start in time."""


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """What every worker of a local cluster is started with."""

    nthreads: int
    memory_limit: int
    resources: dict[str, float]
    host: str
    profile_interval: float | None = 0.01  # seconds between profiler samples; None: no profiler
    # Where workers spill, and their memory thresholds as fractions of memory_limit (None: off).
    local_directory: str | None = None
    memory_target_fraction: float | None = DEFAULT_TARGET
    memory_spill_fraction: float | None = DEFAULT_SPILL
    memory_pause_fraction: float | None = DEFAULT_PAUSE
    memory_terminate_fraction: float | None = DEFAULT_TERMINATE

    def memory_args(self) -> list[str]:
        """The ``dsched worker`` options for the spill directory and the thresholds."""
        args = ["--local-directory", self.local_directory] if self.local_directory else []
        for option, fraction in (
            ("--memory-target", self.memory_target_fraction),
            ("--memory-spill", self.memory_spill_fraction),
            ("--memory-pause", self.memory_pause_fraction),
            ("--memory-terminate", self.memory_terminate_fraction),
        ):
            args += [option, "false" if fraction is None else repr(fraction)]
        return args


@dataclasses.dataclass(frozen=True)
class SchedulerOptions:
    """What the scheduler of a local cluster is started with."""

    allowed_failures: int = DEFAULT_ALLOWED_FAILURES


class ProcessBackend:
    """The scheduler and each worker as ``python -m dsched ...`` child processes.

    The scheduler writes a scheduler file in a private temporary directory
    once it listens; its address is read from there.  Workers are named
    ``"0"``, ``"1"``, ...; they count as started once the scheduler lists them
    (asked with ``GetWorkers``), which also gives their addresses.
    """

    def __init__(
        self,
        *,
        host: str,
        scheduler_port: int,
        n_workers: int,
        options: WorkerOptions,
        log_level: str,
        start_timeout: float,
        stop_timeout: float,
        dashboard_address: str | None = None,
        scheduler_options: SchedulerOptions = SchedulerOptions(),
        security: Security = Security(),
        insecure: bool = False,
    ) -> None:
        self.scheduler_options = scheduler_options
        self.security = security
        self.insecure = insecure
        self.host = host
        self.scheduler_port = scheduler_port
        self.n_workers = n_workers
        self.options = options
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.dashboard_address = dashboard_address
        self.dashboard_link: str | None = None
        self.scheduler_address = ""
        self.scheduler: ChildProcess | None = None
        self.worker_children: dict[str, ChildProcess] = {}
        self.worker_addresses: dict[str, str] = {}
        # Every child ever started, for the cleanup of last resort (a finalizer).
        self.children: list[ChildProcess] = []
        self.tmpdir = Path(tempfile.mkdtemp(prefix="dsched-cluster-"))
        self._next_name = 0
        self._stop: anyio.Event | None = None

    def _command(self, *args: str) -> list[str]:
        # -P: not the working directory first on sys.path, where a source checkout would shadow the
        # installed (compiled) packages the parent runs.
        return [sys.executable, "-P", "-m", "dsched", "--log-level", self.log_level, *args]

    def _child(self, name: str, args: list[str]) -> ChildProcess:
        """Start a child; the cluster's security reaches it through its environment, never its argv."""
        if self.insecure:
            args = [*args, "--insecure"]
        return ChildProcess(name, self._command(*args), env=self.security.environment())

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        try:
            await self._start_scheduler()
            await self.add_workers(self.n_workers)
            task_status.started()
            await self._stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop_now)

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def stop_now(self) -> None:
        """Stop every child (workers first, so they retire from a live scheduler); blocking."""
        workers = [c for c in self.children if c is not self.scheduler]
        stop_all(workers, self.stop_timeout)
        stop_all(self.children, self.stop_timeout)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    async def _start_scheduler(self) -> None:
        path = self.tmpdir / "scheduler.json"
        dashboard = (
            ["--dashboard-address", self.dashboard_address] if self.dashboard_address is not None else ["--no-dashboard"]
        )
        child = self._child(
            "scheduler",
            [
                "scheduler", "--host", self.host, "--port", str(self.scheduler_port), "--scheduler-file", str(path),
                "--profile-interval", str(self.options.profile_interval or 0), *dashboard,
                "--allowed-failures", str(self.scheduler_options.allowed_failures),
            ],
        )
        self.scheduler = child
        self.children.append(child)
        deadline = time.monotonic() + self.start_timeout
        while True:
            info = read_scheduler_file(path)
            if info is not None:
                self.scheduler_address = str(info["address"])
                self.dashboard_link = str(info["dashboard"]) if info.get("dashboard") else None
                return
            if not child.alive():
                raise ClusterStartError(f"the scheduler did not start: {child.describe_exit()}")
            if time.monotonic() > deadline:
                raise ClusterStartTimeout(
                    f"the scheduler did not start listening within {self.start_timeout}s: {child.describe_exit()}"
                )
            await anyio.sleep(0.02)

    def _worker_args(self, name: str) -> list[str]:
        opts = self.options
        args = ["worker", self.scheduler_address, "--name", name, "--nthreads", str(opts.nthreads), "--host", opts.host]
        args += ["--memory-limit", str(opts.memory_limit), "--profile-interval", str(opts.profile_interval or 0)]
        args += opts.memory_args()
        if opts.resources:
            args += ["--resources", ",".join(f"{k}={v!r}" for k, v in opts.resources.items())]
        return args

    async def add_workers(self, n: int) -> list[str]:
        """Start ``n`` more workers; return their addresses once all are registered."""
        new: dict[str, ChildProcess] = {}
        for _ in range(n):
            name = str(self._next_name)
            self._next_name += 1
            child = self._child(f"worker-{name}", self._worker_args(name))
            new[name] = child
            self.children.append(child)
            self.worker_children[name] = child
        if not new:
            return []

        def check() -> None:
            for child in new.values():
                if not child.alive():
                    raise ClusterStartError(f"a worker did not start: {child.describe_exit()}")

        def all_registered(workers: list[p.WorkerInfo]) -> bool:
            return set(new) <= {w.name for w in workers}

        try:
            infos = await wait_for_workers(
                self.scheduler_address, all_registered, timeout=self.start_timeout, check=check,
                security=self.security,
            )
        except TimeoutError:
            late = [c.describe_exit() for c in new.values()]
            raise ClusterStartTimeout(
                f"{len(new)} worker(s) did not register within {self.start_timeout}s:\n" + "\n".join(late)
            ) from None
        for info in infos:
            if info.name in new:
                self.worker_addresses[info.name] = info.address
        return [self.worker_addresses[name] for name in new]

    async def scale(self, n: int) -> None:
        """Start or stop workers until ``n`` live ones remain (the newest are stopped first)."""
        for name, child in list(self.worker_children.items()):
            if not child.alive():
                del self.worker_children[name]
                self.worker_addresses.pop(name, None)
        extra = len(self.worker_children) - n
        if extra < 0:
            await self.add_workers(-extra)
        elif extra > 0:
            names = sorted(self.worker_children, key=int)[-extra:]
            doomed = [self.worker_children.pop(name) for name in names]
            for name in names:
                self.worker_addresses.pop(name, None)
            await anyio.to_thread.run_sync(stop_all, doomed, self.stop_timeout)


class InProcessBackend:
    """A SchedulerServer and Workers in this process, in the event loop ``run`` runs in."""

    def __init__(
        self,
        *,
        host: str,
        scheduler_port: int,
        n_workers: int,
        options: WorkerOptions,
        start_timeout: float,
        dashboard_address: str | None = None,
        scheduler_options: SchedulerOptions = SchedulerOptions(),
        security: Security = Security(),
        insecure: bool = False,
    ) -> None:
        self.scheduler_options = scheduler_options
        self.security = security
        self.insecure = insecure
        self.dashboard_address = dashboard_address
        self.host = host
        self.scheduler_port = scheduler_port
        self.n_workers = n_workers
        self.options = options
        self.start_timeout = start_timeout
        self.scheduler_address = ""
        self.server: SchedulerServer | None = None
        self.worker_addresses: dict[str, str] = {}
        self.workers: dict[str, Worker] = {}
        self._worker_stops: dict[str, anyio.Event] = {}
        self._worker_done: dict[str, anyio.Event] = {}
        self._next_name = 0
        self._tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        async with SchedulerServer(
            self.host, self.scheduler_port, gc_mode="relaxed", dashboard_address=self.dashboard_address,
            state=sc.SchedulerState(allowed_failures=self.scheduler_options.allowed_failures),
            profile_interval=self.options.profile_interval, security=self.security, insecure=self.insecure,
        ) as server:
            self.server = server
            self.scheduler_address = server.address
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self.add_workers(self.n_workers)
                task_status.started()
                await self._stop.wait()
                await self._stop_workers(list(self._worker_stops))
            self._tg = None

    @property
    def dashboard_link(self) -> str | None:
        return self.server.dashboard_link if self.server is not None else None

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _run_worker(self, name: str, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        from dsched._worker import Worker

        opts = self.options
        stop = anyio.Event()
        done = anyio.Event()
        try:
            async with Worker(
                self.scheduler_address,
                nthreads=opts.nthreads,
                name=name,
                memory_limit=opts.memory_limit,
                resources=dict(opts.resources),
                host=opts.host,
                profile_interval=opts.profile_interval,
                local_directory=opts.local_directory,
                memory_target_fraction=opts.memory_target_fraction,
                memory_spill_fraction=opts.memory_spill_fraction,
                memory_pause_fraction=opts.memory_pause_fraction,
                memory_terminate_fraction=opts.memory_terminate_fraction,
                security=self.security,
                insecure=self.insecure,
            ) as worker:
                self.workers[name] = worker
                self.worker_addresses[name] = worker.address
                self._worker_stops[name] = stop
                self._worker_done[name] = done
                task_status.started(worker.address)
                async with anyio.create_task_group() as inner:
                    inner.start_soon(_serve_then_cancel, worker, inner)
                    await stop.wait()
                    inner.cancel_scope.cancel()
        finally:
            self.workers.pop(name, None)
            self.worker_addresses.pop(name, None)
            self._worker_stops.pop(name, None)
            self._worker_done.pop(name, None)
            done.set()

    async def add_workers(self, n: int) -> list[str]:
        """Start ``n`` more workers; return their addresses once the scheduler registered them."""
        tg, server = self._tg, self.server
        if tg is None or server is None:
            raise RuntimeError("the cluster is not running")
        addresses: list[str] = []
        with anyio.fail_after(self.start_timeout):
            for _ in range(n):
                name = str(self._next_name)
                self._next_name += 1
                addresses.append(await tg.start(self._run_worker, name))
            while not all(a in server.state.workers for a in addresses):
                await anyio.sleep(0.005)
        return addresses

    async def _stop_workers(self, names: list[str]) -> None:
        waits = [self._worker_done[n] for n in names if n in self._worker_done]
        for name in names:
            stop = self._worker_stops.get(name)
            if stop is not None:
                stop.set()
        for done in waits:
            await done.wait()

    async def scale(self, n: int) -> None:
        extra = len(self._worker_stops) - n
        if extra < 0:
            await self.add_workers(-extra)
        elif extra > 0:
            await self._stop_workers(sorted(self._worker_stops, key=int)[-extra:])


async def _serve_then_cancel(worker: Worker, scope_owner: TaskGroup) -> None:
    """Serve until the worker's scheduler connection ends, then end the worker's task."""
    await worker.serve_forever()
    scope_owner.cancel_scope.cancel()
