"""The scheduler's side of the dashboard: :class:`~dsched.dashboard.DashboardSource` over a server.

Runs on the scheduler's event loop (the dashboard is served by uvicorn on the
same loop), so it reads the core's state directly, between ticks.  Every
method is bounded: listings stop at their ``limit``, ``task_groups`` walks the
groups newest first and stops, and nothing iterates over all tasks.
"""

from __future__ import annotations

import platform
import time
from itertools import islice
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import sched_core as sc
from dsched._version import __version__
from dsched.dashboard._source import JSON, Metric, ProfileQuery

if TYPE_CHECKING:
    from dsched._profiler import Sampler, SamplerStats
    from dsched._scheduler_server import SchedulerServer
    from sched_core._model import StateCounts

__all__ = ["SchedulerSource", "status"]

_STATES = ("released", "waiting", "queued", "no_worker", "processing", "memory", "erred")
_MAX_LISTED = 100


def _counts(counts: StateCounts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in _STATES}


def status(server: SchedulerServer) -> JSON:
    state = server.state
    diagnostics = server.diagnostics
    tasks: dict[str, int] = _counts(state.counts)
    tasks["total"] = len(state.tasks)
    memory = sum(conn.memory for conn in server.workers.values())
    spilled = sum(conn.spilled for conn in server.workers.values())
    return {
        "scheduler": {
            "id": server.scheduler_id,
            "address": server.address,
            "dashboard": server.dashboard_link,
            "started": diagnostics.started,
            "uptime_s": time.time() - diagnostics.started,
            "versions": {"dsched": __version__, "python": platform.python_version(), "compiled": sc.COMPILED},
        },
        "tasks": tasks,
        "throughput": {
            "tasks_per_s": diagnostics.throughput(),
            "finished": state.n_tasks_finished,
            "erred": state.n_tasks_erred,
        },
        "workers": len(state.workers),
        "threads": state.total_nthreads,
        "clients": len(server.clients),
        "memory": memory,
        # Result bytes spilled to the workers' disks, and workers paused by memory pressure.
        "spilled": spilled,
        "paused_workers": state.n_paused,
        # Peers refused by each limit (see dsched/_limits.py), and frames that did not decode.
        "refused": dict(server.refused),
        "protocol_errors": server.protocol_errors,
        # How long the core's batches held the loop (and so every request, this one included).
        "loop": server.loop_stats.snapshot(),
    }


class SchedulerSource:
    """A :class:`~dsched.dashboard.DashboardSource` reading a running :class:`SchedulerServer`."""

    def __init__(self, server: SchedulerServer) -> None:
        self.server = server

    def status(self) -> JSON:
        return status(self.server)

    def workers(self, limit: int) -> list[JSON]:
        server = self.server
        now = time.monotonic()
        out: list[JSON] = []
        for ws in islice(server.state.workers.values(), limit):
            conn = server.workers.get(ws.address)
            out.append({
                "address": ws.address,
                "name": ws.name,
                "nthreads": ws.nthreads,
                "cpu": conn.cpu if conn is not None else None,
                "memory": ws.memory,
                "memory_limit": ws.memory_limit,
                "processing": len(ws.processing),
                "in_memory": len(ws.has_what),
                "nbytes": ws.nbytes,
                "managed": conn.managed if conn is not None else 0,
                "spilled": conn.spilled if conn is not None else 0,
                "paused": ws.paused,
                "latency_ms": ws.latency * 1000.0,
                "last_seen_s": now - conn.last_heard if conn is not None else None,
                "tasks_finished": ws.n_finished,
            })
        return out

    def task_groups(self, limit: int) -> list[JSON]:
        out: list[JSON] = []
        for name in islice(reversed(self.server.state.groups), limit):
            group = self.server.state.groups[name]
            counts = _counts(group.counts)
            total = sum(counts.values())
            out.append({
                "name": group.name,
                "prefix": group.prefix.name,
                "total": total,
                "counts": counts,
                "done": (counts["memory"] + counts["erred"] + counts["released"]) / total if total else 1.0,
                "nbytes": group.nbytes_total,
            })
        return out

    def task(self, key: str) -> JSON | None:
        ts = self.server.state.tasks.get(key)
        if ts is None:
            return None
        dependents = ts.dependents or []
        return {
            "key": ts.key,
            "state": sc.state_name(ts.state),
            "group": ts.group.name,
            "priority": ts.priority,
            "dependencies": [d.key for d in islice(ts.dependencies, _MAX_LISTED)],
            "n_dependencies": len(ts.dependencies),
            "dependents": [d.key for d in islice(dependents, _MAX_LISTED)],
            "n_dependents": len(dependents),
            "who_has": [ws.address for ws in islice(ts.who_has or [], _MAX_LISTED)],
            "processing_on": ts.processing_on.address if ts.processing_on is not None else None,
            "nbytes": ts.nbytes,
            "retries_left": ts.retries,
            "wanted_by": [cs.client_id for cs in islice(ts.who_wants or [], _MAX_LISTED)],
        }

    def task_stream(self, since: float, limit: int) -> list[JSON]:
        stream = self.server.diagnostics.task_stream
        picked: list[JSON] = []
        # Newest first, stopping at ``since`` or ``limit``: bounded however long the stream is.
        for key, worker, start, stop, erred, arrived in reversed(stream):
            if arrived <= since or len(picked) >= limit:
                break
            picked.append({
                "key": key,
                "group": sc.key_group(key),
                "prefix": sc.key_split(key),
                "worker": worker,
                "start": start,
                "stop": stop,
                "arrived": arrived,
                "status": "erred" if erred else "finished",
            })
        picked.reverse()
        return picked

    def metrics(self) -> list[Metric]:
        server = self.server
        state = server.state
        counts = _counts(state.counts)
        diagnostics = server.diagnostics
        return [
            Metric("dsched_tasks", "gauge", "Tasks the scheduler knows, by state.",
                   [({"state": name}, float(n)) for name, n in counts.items()]),
            Metric("dsched_tasks_finished_total", "counter", "Tasks finished since the scheduler started.",
                   [({}, float(state.n_tasks_finished))]),
            Metric("dsched_tasks_erred_total", "counter", "Tasks that raised since the scheduler started.",
                   [({}, float(state.n_tasks_erred))]),
            Metric("dsched_throughput_tasks_per_second", "gauge", "Tasks done per second over the last 10 s.",
                   [({}, diagnostics.throughput())]),
            Metric("dsched_workers", "gauge", "Connected workers.", [({}, float(len(state.workers)))]),
            Metric("dsched_threads", "gauge", "Task threads over all workers.", [({}, float(state.total_nthreads))]),
            Metric("dsched_clients", "gauge", "Connected clients.", [({}, float(len(server.clients)))]),
            Metric("dsched_worker_memory_bytes", "gauge", "Process memory of the workers, summed.",
                   [({}, float(sum(conn.memory for conn in server.workers.values())))]),
            Metric("dsched_worker_managed_bytes", "gauge", "Result bytes held in the workers' memory, summed.",
                   [({}, float(sum(conn.managed for conn in server.workers.values())))]),
            Metric("dsched_worker_spilled_bytes", "gauge", "Result bytes spilled to the workers' disks, summed.",
                   [({}, float(sum(conn.spilled for conn in server.workers.values())))]),
            Metric("dsched_workers_paused", "gauge", "Workers paused by memory pressure.",
                   [({}, float(state.n_paused))]),
            Metric("dsched_protocol_errors_total", "counter", "Connections dropped for protocol errors.",
                   [({}, float(server.protocol_errors))]),
            Metric("dsched_scheduler_batch_longest_seconds", "gauge",
                   "The longest batch of events that held the scheduler's event loop in the last minute.",
                   [({}, server.loop_stats.longest())]),
            Metric("dsched_scheduler_batches_total", "counter", "Batches of events handled by the scheduler.",
                   [({}, float(server.loop_stats.steps))]),
            Metric("dsched_refused_total", "counter", "Requests and connections refused, by the limit refusing them.",
                   [({"limit": limit}, float(n)) for limit, n in sorted(server.refused.items())]),
            Metric("dsched_uptime_seconds", "gauge", "Seconds since the scheduler started.",
                   [({}, time.time() - diagnostics.started)]),
            *_profiler_metrics(diagnostics.sampler),
        ]

    async def profile(self, query: ProfileQuery) -> JSON:
        return await self.server.diagnostics.profile_workers(query.start, query.stop, query.workers, query.prefix)

    async def profile_server(self, start: float | None, stop: float | None) -> JSON:
        return self.server.diagnostics.profile_server(start, stop)

    async def capture(self, kind: str, seconds: float) -> bytes:
        return await self.server.diagnostics.capture(kind, seconds)

    async def record(self, action: str, path: str | None, max_bytes: int | None) -> JSON:
        if path is not None:
            raise ValueError(
                "a request cannot name the file: the scheduler writes recordings to new files in its "
                "record directory (dsched scheduler --record-dir), and the reply says where"
            )
        return self.server.diagnostics.record(action, max_bytes)


# name, type, help, value of the sampler's statistics
_PROFILER_METRICS: Final[tuple[tuple[str, str, str, Callable[[SamplerStats], float]], ...]] = (
    ("dsched_profiler_samples_total", "counter", "Samples taken by the scheduler process's profiler.",
     lambda stats: float(stats.samples)),
    ("dsched_profiler_skipped_total", "counter",
     "Samples a signal handler skipped because the profiler's lock was taken.", lambda stats: float(stats.skipped)),
    ("dsched_profiler_busy_seconds_total", "counter", "CPU seconds spent taking samples.",
     lambda stats: stats.busy_seconds),
    ("dsched_profiler_interval_seconds", "gauge", "The profiler's sampling interval now.",
     lambda stats: stats.interval),
)


def _profiler_metrics(sampler: Sampler | None) -> list[Metric]:
    """What the scheduler process's sampler has done (shared with its in-process workers, if any)."""
    stats = sampler.overhead() if sampler is not None else None
    return [
        Metric(name, kind, help_text, [] if stats is None else [({"driver": stats.driver or ""}, value(stats))])
        for name, kind, help_text, value in _PROFILER_METRICS
    ]
