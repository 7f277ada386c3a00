"""What the dashboard reads: the interface between the HTTP app and the scheduler.

The app (``dsched.dashboard._app``) never touches scheduler state itself; it
asks a :class:`DashboardSource` for plain JSON-able snapshots.  The scheduler
server implements it (``dsched._dashboard_source``); tests use a fake.  Every
method does bounded work: ``limit`` caps what a listing returns, and nothing
walks every task.

Times are wall-clock seconds (``time.time()``).  Profile trees are in the
JSON form described in ``dsched._profiler`` (``{"name", "filename", "line",
"count", "children"}``).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["DashboardSource", "Metric", "ProfileQuery"]

JSON = dict[str, Any]


class ProfileQuery:
    """Which samples a profile merges: a time window, workers, and task prefixes."""

    __slots__ = ("prefix", "start", "stop", "workers")

    def __init__(
        self,
        start: float | None = None,
        stop: float | None = None,
        workers: list[str] | None = None,
        prefix: str | None = None,
    ) -> None:
        self.start = start
        self.stop = stop
        self.workers = workers
        self.prefix = prefix


class Metric:
    """One Prometheus metric family: ``samples`` are (labels, value) pairs."""

    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str, kind: str, help: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.name = name
        self.kind = kind  # "gauge" or "counter"
        self.help = help
        self.samples = samples


class DashboardSource(Protocol):
    """Snapshots of one scheduler, each computed in bounded time."""

    def status(self) -> JSON:
        """``{"scheduler": {"id", "address", "started", "uptime_s", "versions": {"dsched", "python",
        "compiled"}}, "tasks": {<state>: n, ..., "total": n}, "throughput": {"tasks_per_s", "finished",
        "erred"}, "workers": n, "threads": n, "clients": n, "memory": bytes}``; ``tasks_per_s`` is over
        the last 10 seconds."""
        ...

    def workers(self, limit: int) -> list[JSON]:
        """Up to ``limit`` workers: ``{"address", "name", "nthreads", "cpu" (percent or None), "memory",
        "memory_limit", "processing", "in_memory", "nbytes", "latency_ms", "last_seen_s",
        "tasks_finished"}``."""
        ...

    def task_groups(self, limit: int) -> list[JSON]:
        """The ``limit`` most recently created task groups, newest first: ``{"name", "prefix", "total",
        "counts": {<state>: n}, "done" (finished or erred, as a fraction of total), "nbytes"}``."""
        ...

    def task(self, key: str) -> JSON | None:
        """One task, or None if the scheduler does not know it: ``{"key", "state", "group", "priority",
        "dependencies" (at most 100 keys), "n_dependencies", "dependents" (at most 100), "n_dependents",
        "who_has" (worker addresses), "processing_on", "nbytes", "retries_left", "wanted_by" (client
        ids)}``."""
        ...

    def task_stream(self, since: float, limit: int) -> list[JSON]:
        """Tasks whose end the scheduler heard of after ``since``, in that order, at most ``limit`` (the
        newest): ``{"key", "group", "prefix", "worker", "start", "stop", "arrived", "status": "finished" |
        "erred"}``; ``start``/``stop`` are the worker's clock, ``arrived`` the scheduler's (poll with
        ``since`` = the last ``arrived`` seen, so that no late report is missed)."""
        ...

    def metrics(self) -> list[Metric]:
        """The figures for ``/metrics``."""
        ...

    async def profile(self, query: ProfileQuery) -> JSON:
        """The workers' task-thread profiles merged (a profile tree); asks the workers, with a timeout:
        workers that do not answer in time are left out and listed under ``"missing"`` at the root."""
        ...

    async def profile_server(self, start: float | None, stop: float | None) -> JSON:
        """The scheduler's own event-loop thread, sampled (a profile tree)."""
        ...

    async def capture(self, kind: str, seconds: float) -> bytes:
        """Profile the scheduler's event loop for ``seconds``: ``kind`` "cprofile" gives a pstats file,
        "viztracer" a VizTracer JSON trace (ValueError if VizTracer is not installed)."""
        ...

    async def record(self, action: str, path: str | None, max_bytes: int | None) -> JSON:
        """Start ("start") or stop ("stop") recording the core's events to ``path``, or describe the
        recording ("status"); the recording's state: ``{"recording": bool, "path", "bytes", "events"}``."""
        ...
