"""What the scheduler knows about itself: profiles, captures, the task stream, recordings.

None of this is on the hot path.  The only per-task work is one ``deque``
append per finished task for the task stream (bounded); everything else runs
when someone asks: a client (``Diagnostics`` messages), the dashboard, or the
CLI.

* Profiles: the scheduler samples its own event-loop thread (the
  "profile-server" view) with :class:`~dsched._profiler.Sampler`; workers sample
  their task threads and loop, and send their trees on ``GetProfile``; the
  scheduler merges those it gets within ``PROFILE_TIMEOUT`` seconds.
* Captures: cProfile (or VizTracer, if installed) of the event-loop thread for
  a number of seconds; the file's bytes are returned.
* Recording: core events to a file (``dsched._recording``), for ``dsched replay``.
"""

from __future__ import annotations

import cProfile
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from dsched import _protocol as p
from dsched._comm import CommClosedError
from dsched._dashboard_source import status
from dsched._profile_export import to_collapsed, to_speedscope
from dsched._profiler import CallTree, Sampler
from dsched._shared_sampler import attach, detach
from dsched._recording import DEFAULT_MAX_BYTES, EventRecorder
from dsched._scheduler_routes import send_quietly

if TYPE_CHECKING:
    from dsched._scheduler_routes import ClientConn
    from dsched._scheduler_server import SchedulerServer

__all__ = ["MAX_CAPTURE_SECONDS", "SchedulerDiagnostics", "TaskRecord"]

logger = logging.getLogger("dsched.scheduler")

TASK_STREAM_LENGTH: Final = 10_000
PROFILE_TIMEOUT: Final = 3.0
MAX_CAPTURE_SECONDS: Final = 300.0
LOOP_LABEL: Final = "event-loop"
RECORD_DIR_ENV: Final = "DSCHED_RECORD_DIR"

# (key, worker, start, stop, erred, arrived): start/stop by the worker's clock, arrived by the scheduler's
TaskRecord = tuple[str, str, float, float, bool, float]


class SchedulerDiagnostics:
    """The scheduler server's diagnostics: owned by it, used by routes, clients and the dashboard."""

    def __init__(
        self, server: SchedulerServer, *, profile_interval: float | None = 0.01,
        record_dir: str | None = None, record_max_bytes: int | None = None,
    ) -> None:
        self.server = server
        self.started = time.time()
        self.task_stream: deque[TaskRecord] = deque(maxlen=TASK_STREAM_LENGTH)
        # (time, tasks finished, tasks erred) once a second: throughput over a window.
        self.progress: deque[tuple[float, int, int]] = deque(maxlen=600)
        self.sampler: Sampler | None = None
        """The process's shared sampler (``dsched._shared_sampler``) while started, else None."""
        self._profile_interval = profile_interval
        # This scheduler's label in that sampler: unique, since an in-process cluster's
        # workers (and, in tests, other schedulers) share it.
        self._label = f"{server.scheduler_id}/{LOOP_LABEL}"
        self._loop_thread = 0
        self._profile_requests: dict[int, dict[str, Any]] = {}
        self._next_request = 0
        self._capturing = False
        self.recorder: EventRecorder | None = None
        # Where recordings started on request go (else $DSCHED_RECORD_DIR, else the temp dir).
        self.record_dir = record_dir
        self._record_max_bytes = record_max_bytes

    # -- lifecycle (on the loop) ------------------------------------------------------

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        if self._profile_interval:
            labels = {self._loop_thread: self._label}
            self.sampler = attach(self._profile_interval, self._label, lambda: labels)

    def stop(self) -> None:
        if self.sampler is not None and self._profile_interval:
            detach(self._profile_interval, self._label)
            self.sampler = None
        if self.recorder is not None:
            self.recorder.close()

    # -- recording ----------------------------------------------------------------------

    def start_recording(self, path: str, max_bytes: int | None = None) -> None:
        """Record the core's events to ``path``, from now on (mid-run: from a snapshot of the
        state; see ``dsched._recording``).  One recording at a time."""
        if self.recorder is not None and self.recorder.active:
            raise ValueError(f"the scheduler records already, to {self.recorder.path}")
        recorder = EventRecorder(path, max_bytes or DEFAULT_MAX_BYTES)
        recorder.start(self.server.state, self.server.scheduler_id)
        self.recorder = recorder

    def record(self, action: str, max_bytes: int | None = None) -> dict[str, Any]:
        """Start a recording ("start"), stop it ("stop"), or describe it ("status").

        A request never names the file: the scheduler writes to a new file in its
        record directory (``record_dir``), so that no request can make it create
        or overwrite a file of its choice; the reply says where.  ``max_bytes``
        may lower the scheduler's bound (``record_max_bytes``), never raise it.
        """
        if action == "start":
            cap = self._record_max_bytes or DEFAULT_MAX_BYTES
            self.start_recording(self._new_recording_path(), min(max_bytes or cap, cap))
        elif action == "stop":
            if self.recorder is None or not self.recorder.active:
                raise ValueError("the scheduler is not recording")
            self.recorder.close()
        elif action != "status":
            raise ValueError(f"action must be start, stop or status, not {action!r}")
        recorder = self.recorder
        if recorder is None:
            return {"recording": False, "path": None, "bytes": 0, "batches": 0, "events": 0, "stopped": "",
                    "first_batch": 0}
        return {
            "recording": recorder.active, "path": recorder.path, "bytes": recorder.bytes_written,
            "batches": recorder.batches, "events": recorder.events, "stopped": recorder.stopped_reason,
            "first_batch": recorder.first_batch,
        }

    def _new_recording_path(self) -> str:
        directory = Path(self.record_dir or os.environ.get(RECORD_DIR_ENV) or Path(tempfile.gettempdir()) / "dsched-recordings")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for n in itertools.count():
            path = directory / f"{self.server.scheduler_id}-{stamp}{f'-{n}' if n else ''}.dsrec"
            if not path.exists():
                return str(path)
        raise AssertionError("unreachable")

    def tick(self, now: float) -> None:
        """Once a second, from the server's periodic task."""
        state = self.server.state
        self.progress.append((now, state.n_tasks_finished, state.n_tasks_erred))

    # -- the task stream (called by the routes, per finished task) ----------------------

    def task_done(self, key: str, worker: str, start: float, duration: float, erred: bool) -> None:
        now = time.time()
        stop = start + duration if start > 0 else now
        self.task_stream.append((key, worker, stop - duration, stop, erred, now))

    def throughput(self, window: float = 10.0) -> float:
        """Tasks finished (or erred) per second over the last ``window`` seconds."""
        progress = self.progress
        if len(progress) < 2:
            return 0.0
        now, finished, erred = progress[-1]
        for then, f0, e0 in reversed(progress):
            if now - then >= window:
                break
        if now <= then:
            return 0.0
        return (finished - f0 + erred - e0) / (now - then)

    # -- profiles -----------------------------------------------------------------------

    def profile_server(self, start: float | None, stop: float | None) -> dict[str, Any]:
        if self.sampler is None:
            return CallTree().to_json()
        return self.sampler.tree(start, stop, self._label).to_json()

    async def profile_workers(
        self, start: float | None, stop: float | None, workers: list[str] | None, prefix: str | None
    ) -> dict[str, Any]:
        """Ask the workers for their trees; merge what arrives within ``PROFILE_TIMEOUT``."""
        conns = self.server.workers
        chosen = [a for a in (workers if workers is not None else list(conns)) if a in conns]
        self._next_request += 1
        request = self._next_request
        pending: dict[str, Any] = {"event": anyio.Event(), "waiting": set(chosen), "trees": []}
        self._profile_requests[request] = pending
        try:
            for address in chosen:
                try:
                    conns[address].sender.send(p.GetProfile(request, start, stop, prefix))
                except CommClosedError:
                    pending["waiting"].discard(address)
            if pending["waiting"]:
                with anyio.move_on_after(PROFILE_TIMEOUT):
                    await pending["event"].wait()
        finally:
            del self._profile_requests[request]
        merged = CallTree()
        for tree in pending["trees"]:
            merged.merge(tree)
        out = merged.to_json()
        out["missing"] = sorted(pending["waiting"])
        return out

    def profile_arrived(self, worker: str, msg: p.ProfileData) -> None:
        """A worker's answer to ``GetProfile`` (from the routes): checked, then kept."""
        pending = self._profile_requests.get(msg.request)
        if pending is None or worker not in pending["waiting"]:
            return  # late, or never asked
        pending["waiting"].discard(worker)
        try:
            pending["trees"].append(CallTree.from_json(msgspec.json.decode(msg.tree)))
        except (ValueError, RecursionError, msgspec.DecodeError) as exc:  # deep nesting: RecursionError
            logger.warning("worker %s sent a malformed profile: %s", worker, str(exc)[:200])
        if not pending["waiting"]:
            pending["event"].set()

    # -- client requests ----------------------------------------------------------------

    def request(self, conn: ClientConn, msg: p.Diagnostics) -> None:
        """Answer a client's ``Diagnostics`` from a task of its own (some take seconds)."""
        tg = self.server.task_group
        if tg is None:
            return
        tg.start_soon(self._answer, conn, msg)

    async def _answer(self, conn: ClientConn, msg: p.Diagnostics) -> None:
        try:
            payload = await self._payload(msg.op, dict(msg.params))
            reply = p.DiagnosticsReply(msg.request, payload)
        except ValueError as exc:
            reply = p.DiagnosticsReply(msg.request, error=str(exc))
        except Exception as exc:  # a diagnostic must never take the scheduler down
            logger.exception("diagnostics %r failed", msg.op)
            reply = p.DiagnosticsReply(msg.request, error=f"{type(exc).__name__}: {exc}")
        send_quietly(conn.sender, reply)  # the client may have left meanwhile

    async def _payload(self, op: str, params: dict[str, Any]) -> bytes:
        if op == "status":
            return json.dumps(status(self.server)).encode()
        if op == "profile":
            workers = _str(params, "workers")
            tree = await self.profile_workers(
                _float(params, "start"), _float(params, "stop"),
                workers.split(",") if workers else None, _str(params, "prefix"),
            )
            return render_profile(tree, _str(params, "format"), "dsched workers")
        if op == "profile-server":
            tree = self.profile_server(_float(params, "start"), _float(params, "stop"))
            return render_profile(tree, _str(params, "format"), "dsched scheduler event loop")
        if op == "capture":
            seconds = _float(params, "seconds")
            return await self.capture(_str(params, "kind") or "cprofile", 5.0 if seconds is None else seconds)
        if op == "record":
            limit = _float(params, "max_bytes")
            return json.dumps(self.record(_str(params, "action") or "", int(limit) if limit else None)).encode()
        raise ValueError(f"unknown diagnostic {op!r}")

    # -- captures -----------------------------------------------------------------------

    async def capture(self, kind: str, seconds: float) -> bytes:
        """Profile the event-loop thread for ``seconds``: a pstats file or a VizTracer trace."""
        if not 0 < seconds <= MAX_CAPTURE_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_CAPTURE_SECONDS:g}], not {seconds!r}")
        if kind not in ("cprofile", "viztracer"):
            raise ValueError(f"kind must be 'cprofile' or 'viztracer', not {kind!r}")
        if self._capturing:
            raise ValueError("a capture is running already: one at a time")
        self._capturing = True
        try:
            if kind == "cprofile":
                return await self._capture_cprofile(seconds)
            return await self._capture_viztracer(seconds)
        finally:
            self._capturing = False

    async def _capture_cprofile(self, seconds: float) -> bytes:
        # cProfile hooks the thread that enables it: this coroutine runs on the loop's thread,
        # so it sees every callback of the loop (the scheduler's whole work) until disabled.
        profile = cProfile.Profile()
        profile.enable()
        try:
            await anyio.sleep(seconds)
        finally:
            profile.disable()
        return _dump(lambda path: profile.dump_stats(path), ".pstats")

    async def _capture_viztracer(self, seconds: float) -> bytes:
        try:
            from viztracer import VizTracer
        except ImportError as exc:
            raise ValueError("VizTracer is not installed on the scheduler: pip install 'dsched[viztracer]'") from exc
        tracer = VizTracer(verbose=0, tracer_entries=1_000_000)
        tracer.start()
        try:
            await anyio.sleep(seconds)
        finally:
            tracer.stop()
        return _dump(lambda path: tracer.save(path), ".json")


def _dump(write: Any, suffix: str) -> bytes:
    fd, path = tempfile.mkstemp(prefix="dsched-capture-", suffix=suffix)
    os.close(fd)
    try:
        write(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _float(params: dict[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}") from None


def _str(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def render_profile(tree: dict[str, Any], fmt: str | None, name: str) -> bytes:
    """A profile tree as JSON, speedscope JSON or collapsed stacks."""
    if fmt in (None, "json"):
        return json.dumps(tree).encode()
    if fmt == "speedscope":
        return json.dumps(to_speedscope(tree, name)).encode()
    if fmt == "collapsed":
        return to_collapsed(tree).encode()
    raise ValueError(f"format must be json, speedscope or collapsed, not {fmt!r}")
