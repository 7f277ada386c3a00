"""The worker's task threads: run tasks, store results, report completions in batches.

The event loop hands a task to the pool with :meth:`TaskExecutor.submit` (a
queue put, no coroutine).  Each of ``nthreads`` threads takes tasks off one
queue, runs them and appends the outcome - an ``ExecuteSuccessEvent`` or
``ExecuteFailureEvent`` for the worker machine - to a shared list, and wakes
the loop (one ``call_soon_threadsafe`` per batch, not per task) - unless more
tasks are already queued and the oldest unreported outcome is younger than
``REPORT_DELAY``: then it runs the next task first.  Each wake-up hands the
GIL to the loop and waits to get it back (the self-pipe write releases it),
which cost short tasks (a pandas chunk of 1-2 ms) about half a millisecond
each; reporting two or three at a time halves that.  Tasks are queued here
only when they are short (the worker's extra execution slots), so an outcome
waits at most ``REPORT_DELAY`` plus one task.

Running a task means: look up its function (unpickled once per function ref
and cached), unpickle its arguments - filling references to dependencies from
the worker's data store - call it, and store the value in the data store
*before* reporting success, as the worker machine requires.  Anything raised
along the way (including a function or argument that does not unpickle) is the
task's error, sent with its formatted traceback.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Final

import sched_core as sc
from dsched._protocol import Payload, payload_view
from dsched._serialize import SerializationError, dumps_exception, loads_args, loads_function, sizeof

__all__ = ["FunctionCache", "RunSpec", "TaskExecutor"]

logger = logging.getLogger("dsched.worker")

_STOP: Final = None

# With more tasks queued, a task thread reports outcomes at least this often.
REPORT_DELAY: Final = 0.004

# What the worker puts in ``ComputeTaskEvent.run_spec``: the function ref, the
# pickled arguments, whether they refer to dependencies, and for layer tasks
# the way to call (``Compute.call``), the dependency keys in call order and
# the piece index (shuffles).
RunSpec = tuple[int, Payload, bool, int, list[str], int]

CALL_PICKLED: Final = 0
CALL_APPLY: Final = 1
CALL_REDUCE: Final = 2
CALL_PIECES: Final = 3


def dependency_values(data: MutableMapping[str, object], keys: list[str]) -> list[object]:
    """The values of ``keys`` from the data store, in order (a layer task's inputs)."""
    values: list[object] = []
    for key in keys:
        try:
            value = data[key]
        except KeyError:
            raise KeyError(f"dependency {key!r} is not in this worker's memory") from None
        if type(value) is SerializationError:  # it could not be sent here from its worker
            raise value
        values.append(value)
    return values


def pieces(values: list[object], index: int) -> list[object]:
    """Piece ``index`` of each split result (a shuffle's combine input)."""
    out: list[object] = []
    for value in values:
        try:
            out.append(value[index])  # type: ignore[index]
        except (IndexError, KeyError, TypeError) as exc:
            raise ValueError(f"a shuffle's split result has no piece {index}: {exc!r}") from None
    return out


class FunctionCache:
    """Pickled functions by ref (from ``DefineFunction``), unpickled on first use."""

    def __init__(self) -> None:
        self.pickled: dict[int, bytes] = {}
        self._loaded: dict[int, Callable[..., Any]] = {}

    def define(self, ref: int, payload: bytes) -> None:
        if self.pickled.get(ref) != payload:
            self.pickled[ref] = payload
            self._loaded.pop(ref, None)

    def forget(self, refs: list[int]) -> None:
        for ref in refs:
            self.pickled.pop(ref, None)
            self._loaded.pop(ref, None)

    def get(self, ref: int) -> Callable[..., Any]:
        func = self._loaded.get(ref)
        if func is None:
            try:
                payload = self.pickled[ref]
            except KeyError:
                raise LookupError(f"function ref {ref} was never defined on this worker") from None
            func = loads_function(payload)
            self._loaded[ref] = func
        return func


class TaskExecutor:
    """``nthreads`` daemon threads running tasks; outcomes go to ``deliver`` on the loop.

    Create it on the event loop (it remembers the running loop); ``deliver``
    receives lists of worker-machine events, called on the loop's thread.
    """

    def __init__(
        self,
        nthreads: int,
        data: MutableMapping[str, object],
        functions: FunctionCache,
        deliver: Callable[[list[sc.WorkerEvent]], None],
        *,
        name: str = "dsched-worker",
    ) -> None:
        self.nthreads = nthreads
        self.data = data
        self.functions = functions
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[tuple[str, RunSpec] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[sc.WorkerEvent] = []
        self._done_since = 0.0  # when the oldest outcome in _done was added (monotonic)
        self._wake_pending = False  # a _flush is scheduled on the loop
        self._closed = False
        self.executing: dict[str, float] = {}  # key -> start time, for diagnostics
        self.running: dict[int, str] = {}  # task thread ident -> the key it runs (for the profiler)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(nthreads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, run_spec: object) -> None:
        """Run ``key`` on the next free thread (called from the loop)."""
        if self._closed:
            return
        self._queue.put((key, run_spec))  # type: ignore[arg-type]

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads after their current task; wait up to ``timeout`` seconds in total."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("task threads still running a task at shutdown: %s", ", ".join(alive))

    # -- on the task threads ----------------------------------------------------------

    def _work(self) -> None:
        get, get_now = self._queue.get, self._queue.get_nowait
        running = self.running
        ident = threading.get_ident()
        while True:
            try:
                item = get_now()
            except queue.Empty:
                if not self._report(force=True):
                    return
                item = get()
            if item is None:
                self._report(force=True)
                return
            key, run_spec = item
            running[ident] = key
            event = self._run(key, run_spec)
            del running[ident]
            with self._lock:
                self._done.append(event)
                if len(self._done) == 1:
                    self._done_since = time.monotonic()
            if not self._report(force=False):
                return

    def _report(self, force: bool) -> bool:
        """Wake the loop for the unreported outcomes: now (``force``), or once the oldest is
        ``REPORT_DELAY`` old.  False if the loop is closed (the worker is gone)."""
        with self._lock:
            wake = bool(self._done) and not self._wake_pending and (
                force or time.monotonic() - self._done_since >= REPORT_DELAY
            )
            if wake:
                self._wake_pending = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._flush)
            except RuntimeError:
                return False
        return True

    def _run(self, key: str, run_spec: RunSpec) -> sc.WorkerEvent:
        start = time.time()
        self.executing[key] = start
        calling = False
        try:
            ref, args_payload, has_deps, call, keys, index = run_spec
            func = self.functions.get(ref)
            view = payload_view(args_payload)
            if call == CALL_PICKLED:
                if has_deps:
                    args, kwargs = loads_args(view, self.data)
                else:
                    args, kwargs = pickle.loads(view)
                    if kwargs is None:
                        kwargs = {}
                calling = True
                value = func(*args, **kwargs)
            else:
                values = dependency_values(self.data, keys)
                calling = True
                if call == CALL_APPLY:
                    extra = pickle.loads(view) if len(view) else ()
                    value = func(*values, *extra)
                elif call == CALL_REDUCE:
                    value = func(values)
                else:
                    value = func(pieces(values, index))
            calling = False
            stop = time.time()
            self.data[key] = value
            return sc.ExecuteSuccessEvent(key, sizeof(value), start, stop)
        except BaseException as exc:  # a task's SystemExit is its error too, not the thread's end
            stop = time.time()
            tb = exc.__traceback__
            if calling and tb is not None and tb.tb_next is not None:
                exc = exc.with_traceback(tb.tb_next)  # start the traceback in the task's own code
            payload, text = dumps_exception(exc)
            return sc.ExecuteFailureEvent(key, payload, text, start, stop)
        finally:
            self.executing.pop(key, None)

    # -- on the loop ------------------------------------------------------------------

    def _flush(self) -> None:
        with self._lock:
            done = self._done
            self._done = []
            self._wake_pending = False
        if done:
            self._deliver(done)
