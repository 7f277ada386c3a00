"""``LocalCluster``: a scheduler and workers on this machine, in one line (as Dask's).

::

    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        ...

``processes=True`` (the default) runs the scheduler and each worker as its own
``python -m dsched ...`` process, so tasks holding the GIL run in parallel and
a crashing task cannot take the caller down.  ``processes=False`` runs them in
this process, in one event loop: cheap to start, handy for debugging.

A synchronous cluster runs its event loop in a background daemon thread and
blocks until every worker is registered.  ``asynchronous=True`` uses the
caller's event loop instead: ``async with LocalCluster(asynchronous=True)``.

Child processes never outlive the cluster: ``close()`` (or leaving the
``with`` block) stops them, a finalizer stops them if the cluster is dropped
or the interpreter exits unclosed, and a child whose parent died stops itself.
"""

from __future__ import annotations

import logging
import math
import subprocess
import weakref
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from dsched._cluster_backends import (
    ClusterStartError,
    ClusterStartTimeout,
    InProcessBackend,
    ProcessBackend,
    SchedulerOptions,
    WorkerOptions,
)
from sched_core._scheduler import DEFAULT_ALLOWED_FAILURES
from dsched._loop_thread import LoopThread
from dsched._security import Security, forget_cluster, remember_cluster
from dsched._sizes import cpu_count, format_bytes, parse_memory_limit
from dsched._worker_memory import DEFAULT_PAUSE, DEFAULT_SPILL, DEFAULT_TARGET, DEFAULT_TERMINATE, parse_fraction

__all__ = ["ClusterStartError", "ClusterStartTimeout", "LocalCluster", "default_workers_and_threads"]

logger = logging.getLogger("dsched.cluster")

T = TypeVar("T")
Backend = ProcessBackend | InProcessBackend


def default_workers_and_threads(
    n_workers: int | None, threads_per_worker: int | None, processes: bool, cores: int | None = None
) -> tuple[int, int]:
    """Dask's defaults: about one thread per core in total.

    With processes and neither given, a balance of processes and threads (4
    cores: 4 x 1, 32 cores: 8 x 4); without processes, one worker with a
    thread per core.  Given one of the two, the other fills the cores.
    """
    cores = cores if cores is not None else cpu_count()
    if n_workers is None and threads_per_worker is None:
        if not processes:
            return 1, cores
        if cores <= 4:
            return cores, 1
        n = min(f for f in range(1, cores + 1) if cores % f == 0 and f >= math.sqrt(cores))
        return n, cores // n
    if n_workers is None:
        assert threads_per_worker is not None
        return (max(1, cores // threads_per_worker) if processes else 1), threads_per_worker
    if threads_per_worker is None:
        return n_workers, max(1, math.ceil(cores / max(1, n_workers)))
    return n_workers, threads_per_worker


def _level_name(level: int) -> str:
    """The ``--log-level`` for children of a cluster made with ``silence_logs=level``."""
    if not level:
        return "info"
    for name, number in (("debug", logging.DEBUG), ("info", logging.INFO), ("warning", logging.WARNING)):
        if level <= number:
            return name
    return "error" if level <= logging.ERROR else "critical"


def _cleanup(backend: Backend, loop: LoopThread | None) -> None:
    """Last resort for a cluster that was not closed: kill its children, stop its loop."""
    if isinstance(backend, ProcessBackend):
        backend.stop_now()
    if loop is not None:
        loop.stop(timeout=2.0)


class LocalCluster:
    """A scheduler and ``n_workers`` workers on this machine.

    Parameters are Dask's: ``n_workers`` and ``threads_per_worker`` default to
    about one thread per core (see :func:`default_workers_and_threads`);
    ``memory_limit`` per worker is bytes, a size such as ``"4GiB"``, a fraction
    of the machine's memory, ``"auto"`` (an equal share) or 0 (no limit);
    ``silence_logs`` is the level below which the cluster's logs are dropped.
    ``dashboard_address``: where the scheduler serves its dashboard (loopback;
    a port in use is replaced by a free one; None: no dashboard), linked as
    ``dashboard_link``; ``profile_interval``: seconds between the profilers'
    samples in the scheduler and every worker (None or 0: no profiler).
    ``start_timeout`` bounds starting the scheduler and each batch of workers.
    With a ``memory_limit``, each worker spills results to disk (in a temporary
    directory under ``local_directory``) and pauses by the thresholds
    ``memory_target_fraction`` (0.6), ``memory_spill_fraction`` (0.7),
    ``memory_pause_fraction`` (0.8) and ``memory_terminate_fraction`` (0.95),
    each a fraction of the limit or False (see docs/operations.md).
    ``allowed_failures``: how many workers may die while running a task before
    the task is erred with :class:`~dsched.KilledWorker`.
    ``security``: the cluster's :class:`~dsched.Security`; a fresh random secret
    is added unless it has one (or ``insecure=True``), so only this process (and
    whoever it tells, e.g. ``Client(cluster)``) can use the cluster.  The
    children get it through their environment, never their command line.
    ``insecure=True``: no generated secret, and the scheduler and workers may
    listen beyond loopback without one.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        host: str = "127.0.0.1",
        scheduler_port: int = 0,
        memory_limit: int | str | float = 0,
        resources: dict[str, float] | None = None,
        asynchronous: bool = False,
        silence_logs: int = logging.WARNING,
        *,
        dashboard_address: str | None = "127.0.0.1:8787",
        profile_interval: float | None = 0.01,
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        local_directory: str | None = None,
        memory_target_fraction: float | bool | None = DEFAULT_TARGET,
        memory_spill_fraction: float | bool | None = DEFAULT_SPILL,
        memory_pause_fraction: float | bool | None = DEFAULT_PAUSE,
        memory_terminate_fraction: float | bool | None = DEFAULT_TERMINATE,
        allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
        security: Security | None = None,
        insecure: bool = False,
    ) -> None:
        if allowed_failures < 0:
            raise ValueError(f"allowed_failures must be at least 0, not {allowed_failures}")
        n, threads = default_workers_and_threads(n_workers, threads_per_worker, processes)
        if n < 0 or threads < 1:
            raise ValueError(f"need n_workers >= 0 and threads_per_worker >= 1, not {n} and {threads}")
        self.processes = processes
        self.asynchronous = asynchronous
        self.threads_per_worker = threads
        self.silence_logs = silence_logs
        options = WorkerOptions(
            nthreads=threads,
            memory_limit=parse_memory_limit(memory_limit, 1, max(1, n)),
            resources=dict(resources or {}),
            host=host,
            profile_interval=profile_interval or None,
            local_directory=local_directory,
            memory_target_fraction=parse_fraction(memory_target_fraction, "memory_target_fraction"),
            memory_spill_fraction=parse_fraction(memory_spill_fraction, "memory_spill_fraction"),
            memory_pause_fraction=parse_fraction(memory_pause_fraction, "memory_pause_fraction"),
            memory_terminate_fraction=parse_fraction(memory_terminate_fraction, "memory_terminate_fraction"),
        )
        self.memory_limit = options.memory_limit
        scheduler_options = SchedulerOptions(allowed_failures=allowed_failures)
        security = security if security is not None else Security()
        if not security.secret and not insecure:
            security = security.with_secret(Security.temporary().secret)
        security.server_ssl_context()  # an unreadable certificate fails here, not in a child process
        self.security = security
        self._backend: Backend
        if processes:
            self._backend = ProcessBackend(
                host=host, scheduler_port=scheduler_port, n_workers=n, options=options,
                log_level=_level_name(silence_logs), start_timeout=start_timeout, stop_timeout=stop_timeout,
                dashboard_address=dashboard_address, scheduler_options=scheduler_options,
                security=security, insecure=insecure,
            )
        else:
            self._backend = InProcessBackend(
                host=host, scheduler_port=scheduler_port, n_workers=n, options=options, start_timeout=start_timeout,
                dashboard_address=dashboard_address, scheduler_options=scheduler_options,
                security=security, insecure=insecure,
            )
        self.status = "created"
        self._loop: LoopThread | None = None
        self._run_future: Future[None] | None = None
        self._tg: TaskGroup | None = None
        self._saved_log_level: int | None = None
        self._finalizer: weakref.finalize[[Backend, LoopThread | None], LocalCluster] | None = None
        if not asynchronous:
            self._start_sync()

    # -- what is running ----------------------------------------------------------------

    @property
    def scheduler_address(self) -> str:
        return self._backend.scheduler_address

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's status page (``http://127.0.0.1:8787/status``), or None without one."""
        return self._backend.dashboard_link

    @property
    def workers(self) -> list[str]:
        """The addresses of the workers this cluster started and that still run."""
        backend = self._backend
        if isinstance(backend, ProcessBackend):
            return [
                address for name, address in backend.worker_addresses.items()
                if name in backend.worker_children and backend.worker_children[name].alive()
            ]
        return list(backend.worker_addresses.values())

    @property
    def worker_processes(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes ever started (``processes=True``), in order; [] otherwise."""
        backend = self._backend
        if not isinstance(backend, ProcessBackend):
            return []
        return [c.popen for c in backend.children if c is not backend.scheduler]

    @property
    def scheduler_process(self) -> subprocess.Popen[bytes] | None:
        backend = self._backend
        if isinstance(backend, ProcessBackend) and backend.scheduler is not None:
            return backend.scheduler.popen
        return None

    def get_logs(self) -> dict[str, str]:
        """The last log lines of each child process (``processes=True``), by name."""
        backend = self._backend
        if not isinstance(backend, ProcessBackend):
            return {}
        return {c.name: c.log() for c in backend.children}

    def __repr__(self) -> str:
        memory = f", memory={format_bytes(self.memory_limit)}" if self.memory_limit else ""
        return (
            f"LocalCluster({self.scheduler_address or 'not started'!r}, workers={len(self.workers)}, "
            f"threads={len(self.workers) * self.threads_per_worker}{memory}, processes={self.processes}, "
            f"status={self.status})"
        )

    # -- starting and stopping ----------------------------------------------------------

    def _silence(self) -> None:
        if not self.processes and self.silence_logs:
            dsched_logger = logging.getLogger("dsched")
            self._saved_log_level = dsched_logger.level
            dsched_logger.setLevel(self.silence_logs)

    def _unsilence(self) -> None:
        if self._saved_log_level is not None:
            logging.getLogger("dsched").setLevel(self._saved_log_level)
            self._saved_log_level = None

    def _start_sync(self) -> None:
        self._loop = LoopThread("dsched-cluster-loop")
        self._finalizer = weakref.finalize(self, _cleanup, self._backend, self._loop)
        self._silence()
        try:
            self._run_future, _ = self._loop.portal.start_task(self._backend.run, name="dsched-cluster")
        except BaseException:
            self._finalizer()
            self._unsilence()
            self.status = "failed"
            raise
        self.status = "running"
        remember_cluster(self.scheduler_address, self.security)  # Client(cluster.scheduler_address) finds it

    async def _start_async(self) -> None:
        if self.status != "created":
            raise RuntimeError(f"the cluster is {self.status}: it can be started once")
        self._finalizer = weakref.finalize(self, _cleanup, self._backend, None)
        self._silence()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._backend.run)
        except BaseException:
            self.status = "failed"
            self._unsilence()
            self._finalizer()
            await tg.__aexit__(None, None, None)
            raise
        self._tg = tg
        self.status = "running"
        remember_cluster(self.scheduler_address, self.security)

    def close(self) -> Any:
        """Stop the workers, then the scheduler; idempotent.

        With ``asynchronous=True`` this returns a coroutine: ``await cluster.close()``.
        """
        if self.asynchronous:
            return self.aclose()
        if self.status in ("closed", "created"):
            return None
        loop, future = self._loop, self._run_future
        try:
            if loop is not None and future is not None and not future.done():
                loop.portal.call(self._backend.request_stop)
                future.result()
        finally:
            self.status = "closed"
            forget_cluster(self.scheduler_address, self.security)
            self._unsilence()
            if self._finalizer is not None:
                self._finalizer()
        return None

    async def aclose(self) -> None:
        """Close an asynchronous cluster (from the task that started it)."""
        tg, self._tg = self._tg, None
        if tg is None:
            return
        try:
            self._backend.request_stop()
            await tg.__aexit__(None, None, None)
        finally:
            self.status = "closed"
            forget_cluster(self.scheduler_address, self.security)
            self._unsilence()
            if self._finalizer is not None:
                self._finalizer()

    def _call(self, func: Callable[[], Awaitable[T]]) -> Any:
        """Run ``func`` in the cluster's loop (sync), or return its awaitable (asynchronous)."""
        if self.asynchronous:
            return func()
        if self._loop is None or self.status != "running":
            raise RuntimeError(f"the cluster is {self.status}")
        return self._loop.portal.call(func)

    def scale(self, n: int) -> Any:
        """Start or stop workers until there are ``n`` (awaitable if asynchronous)."""
        if n < 0:
            raise ValueError(f"cannot scale to {n} workers")
        return self._call(lambda: self._backend.scale(n))

    def add_worker(self) -> Any:
        """Start one more worker; return its address (awaitable if asynchronous)."""

        async def add() -> str:
            (address,) = await self._backend.add_workers(1)
            return address

        return self._call(add)

    def __enter__(self) -> LocalCluster:
        if self.asynchronous:
            raise TypeError("an asynchronous LocalCluster is used with 'async with'")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> LocalCluster:
        if not self.asynchronous:
            raise TypeError("'async with' needs LocalCluster(..., asynchronous=True)")
        await self._start_async()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, LocalCluster]:
        """``cluster = await LocalCluster(asynchronous=True)``, as in Dask."""
        return self.__aenter__().__await__()
