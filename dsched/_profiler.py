"""A statistical profiler: sampled call stacks of chosen threads, as call trees over time.

A :class:`Sampler` thread wakes every ``interval`` seconds (less often in a
process of more than 32 threads: see :meth:`Sampler.effective_interval`), reads
every thread's current frame with ``sys._current_frames()``, and adds the stacks of the threads
it was asked about (``threads()`` maps a thread ident to a label, or to None to
skip it) to the tree of that label in the current time bucket.  Buckets of
``bucket_seconds`` are kept for ``history_seconds``; :meth:`Sampler.tree` merges
those overlapping a time window.

A :class:`CallTree` counts samples per call path.  A frame is identified by its
*function* ``(co_filename, co_firstlineno, co_name)``, so all samples of one
call merge whatever line was running.  Its JSON form is the one shared by every
profile API and the dashboard (``{"name", "filename", "line", "count",
"children"}``, root ``"all"``); :meth:`CallTree.from_json` validates trees that
come from other processes.

Bounds, so that memory stays bounded whatever runs:

* a stack keeps at most ``max_depth`` frames from its root (default 256); the
  sample is counted on the deepest kept frame.  Walking a stack stops after
  4,096 frames, so a deeper stack loses its outermost frames;
* a tree holds at most ``max_nodes`` nodes (default 10,000): once full, a stack
  that needs a new node is counted on the deepest node that already exists (its
  deeper frames fold into their parent, which then shows them as its own time);
* the history holds the buckets of the last ``history_seconds`` only.

Trimmed: the sampler's own thread (and the thread calling :meth:`Sampler.sample_once`)
is never sampled, and the standard library's thread bootstrap frames at the root
of a stack (``threading.py``: ``_bootstrap``, ``_bootstrap_inner``, ``run``) are
dropped, so trees start at the thread's target.  A thread whose target is itself
one of those functions (``threading.Timer.run``) loses that frame too.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Final, TypeAlias

from dsched._sampler_alarm import AlarmDriver, choose_driver
from dsched._stacks import FrameId, Label, StackReader

__all__ = [
    "DEFAULT_MAX_NODES",
    "MAX_DEPTH",
    "THREADS_AT_FULL_RATE",
    "CallTree",
    "FrameId",
    "Label",
    "Sampler",
    "SamplerStats",
    "ThreadLabels",
    "loop_thread_sampler",
]

ThreadLabels: TypeAlias = Callable[[], Mapping[int, Label]]
"""Returns ``{thread ident: label}`` for the threads to sample now (None: skip that thread)."""

DEFAULT_MAX_NODES: Final = 10_000
# Past this many threads in the process, samples are taken less often (Sampler.effective_interval).
THREADS_AT_FULL_RATE: Final = 32
MAX_DEPTH: Final = 256
MAX_JSON_NODES: Final = 200_000
_MAX_COUNT: Final = 2**53 - 1  # the largest integer a JavaScript reader keeps exact


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[FrameId, _Node] = {}


def _order(item: tuple[FrameId, _Node]) -> tuple[int, str, str, int]:
    (filename, line, name), node = item
    return (-node.count, name, filename, line)


def _children_reversed(node: _Node) -> list[tuple[FrameId, _Node] | None]:
    """``node``'s children in reverse JSON order (to be popped from a work list)."""
    ordered = sorted(node.children.items(), key=_order, reverse=True)
    work: list[tuple[FrameId, _Node] | None] = []
    work.extend(ordered)
    return work


class CallTree:
    """Sample counts per call path (root -> leaf), bounded by ``max_nodes`` and ``max_depth``."""

    __slots__ = ("_nodes", "_root", "max_depth", "max_nodes")

    def __init__(self, max_nodes: int = DEFAULT_MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
        if max_nodes < 0 or max_depth < 0:
            raise ValueError("max_nodes and max_depth must be >= 0")
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self._root = _Node()
        self._nodes = 0

    @property
    def count(self) -> int:
        """The number of samples in the tree."""
        return self._root.count

    @property
    def nodes(self) -> int:
        """The number of nodes below the root."""
        return self._nodes

    def add_stack(self, frames: Sequence[FrameId], count: int = 1) -> None:
        """Count ``count`` samples of the stack ``frames`` (root first): O(len(frames))."""
        node = self._root
        node.count += count
        if len(frames) > self.max_depth:
            frames = frames[: self.max_depth]
        for ident in frames:
            child = node.children.get(ident)
            if child is None:
                if self._nodes >= self.max_nodes:
                    return  # full: the rest of the stack folds into ``node``
                child = node.children[ident] = _Node()
                self._nodes += 1
            child.count += count
            node = child

    def merge(self, other: CallTree) -> None:
        """Add every sample of ``other`` to this tree (within this tree's bounds)."""
        if other is self:
            other = self.copy()
        self._root.count += other._root.count
        todo = [(self._root, other._root, 0)]
        while todo:
            into, source, depth = todo.pop()
            if depth >= self.max_depth:
                continue
            for ident, child in source.children.items():
                mine = into.children.get(ident)
                if mine is None:
                    if self._nodes >= self.max_nodes:
                        continue  # folds into ``into``, whose count already includes it
                    mine = into.children[ident] = _Node()
                    self._nodes += 1
                mine.count += child.count
                todo.append((mine, child, depth + 1))

    def copy(self) -> CallTree:
        tree = CallTree(self.max_nodes, self.max_depth)
        tree.merge(self)
        return tree

    def stacks(self) -> Iterator[tuple[tuple[FrameId, ...], int]]:
        """Each distinct stack (root first) with its own samples (not its callees'), depth first.

        Children come in the order of :meth:`to_json`; the root's own samples (if
        any) come first with an empty stack.
        """
        path: list[FrameId] = []
        todo: list[tuple[FrameId, _Node] | None] = []
        own = self._root.count - sum(c.count for c in self._root.children.values())
        if own > 0:
            yield (), own
        todo.extend(_children_reversed(self._root))
        while todo:
            item = todo.pop()
            if item is None:  # leaving a node
                path.pop()
                continue
            ident, node = item
            path.append(ident)
            own = node.count - sum(c.count for c in node.children.values())
            if own > 0:
                yield tuple(path), own
            todo.append(None)
            todo.extend(_children_reversed(node))

    def to_json(self) -> dict[str, Any]:
        """The shared JSON form: nested nodes, children by count descending."""
        root: dict[str, Any] = {
            "name": "all", "filename": "", "line": 0, "count": self._root.count, "children": [],
        }
        todo = [(self._root, root["children"])]
        while todo:
            node, out = todo.pop()
            for (filename, line, name), child in sorted(node.children.items(), key=_order):
                entry = {"name": name, "filename": filename, "line": line,
                         "count": child.count, "children": []}
                out.append(entry)
                if child.children:
                    todo.append((child, entry["children"]))
        return root

    @classmethod
    def from_json(
        cls, data: object, *, max_nodes: int = MAX_JSON_NODES, max_depth: int = MAX_DEPTH
    ) -> CallTree:
        """A tree from its JSON form; ``ValueError`` (never a crash) on anything malformed.

        Checked without recursion: node shape and types, counts non-negative and
        at least the sum of their children's, nesting at most ``max_depth`` below
        the root, at most ``max_nodes`` nodes.  Siblings naming the same function
        are merged.
        """
        tree = cls(max_nodes=max_nodes, max_depth=max_depth)
        *_, count, children = _checked(data, 0)
        tree._root.count = count
        todo = [(children, tree._root, count, 1)]
        while todo:
            entries, parent, parent_count, depth = todo.pop()
            if entries and depth > max_depth:
                raise ValueError(f"profile tree: nested deeper than {max_depth} frames")
            total = 0
            for entry in entries:
                name, filename, line, count, grand = _checked(entry, depth)
                total += count
                ident = (filename, line, name)
                node = parent.children.get(ident)
                if node is None:
                    if tree._nodes >= max_nodes:
                        raise ValueError(f"profile tree: more than {max_nodes} nodes")
                    node = parent.children[ident] = _Node()
                    tree._nodes += 1
                node.count += count
                todo.append((grand, node, count, depth + 1))
            if total > parent_count:
                raise ValueError(
                    f"profile tree: children of a node at depth {depth - 1} count {total} "
                    f"samples, more than the node's {parent_count}"
                )
        return tree


def _checked(entry: object, depth: int) -> tuple[str, str, int, int, list[object]]:
    """``(name, filename, line, count, children)`` of one JSON node, or ValueError."""
    where = f"profile tree: node at depth {depth}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object, not {type(entry).__name__}")
    missing = [k for k in ("name", "filename", "line", "count", "children") if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    name, filename, line = entry["name"], entry["filename"], entry["line"]
    count, children = entry["count"], entry["children"]
    if not isinstance(name, str) or not isinstance(filename, str):
        raise ValueError(f"{where}: name and filename must be strings")
    for field, value in (("line", line), ("count", count)):
        if type(value) is not int or not 0 <= value <= _MAX_COUNT:
            shown = repr(value)[:40]
            raise ValueError(f"{where} ({name[:80]!r}): {field} must be an integer >= 0, got {shown}")
    if not isinstance(children, list):
        raise ValueError(f"{where} ({name[:80]!r}): children must be a list")
    return name, filename, line, count, children


# --- the sampler ----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerStats:
    """What sampling cost: rounds taken, stacks recorded, errors, and the CPU time it took.

    ``busy_seconds`` is CPU time of the sampling thread (``time.thread_time``):
    while it runs it holds the GIL, so it is also the time taken from the
    process's Python threads.  ``running_seconds`` is wall time since ``start()``.
    """

    samples: int
    stacks: int
    errors: int
    busy_seconds: float
    running_seconds: float
    last_error: str | None = None
    interval: float = 0.0  # the effective interval when these were read
    skipped: int = 0  # samples a signal handler skipped: the sampler's lock was taken
    driver: str | None = None  # "signal" or "thread" once started

    @property
    def fraction(self) -> float:
        """CPU time spent sampling per second of running time."""
        return self.busy_seconds / self.running_seconds if self.running_seconds > 0 else 0.0


class _Bucket:
    __slots__ = ("start", "trees")

    def __init__(self, start: float) -> None:
        self.start = start
        self.trees: dict[str, CallTree] = {}


class Sampler:
    """Samples the threads named by ``threads()`` every ``interval`` seconds.

    What drives it (``driver``, see ``dsched._sampler_alarm``): a daemon thread
    of its own, or, with ``driver="auto"`` (the default of dsched's scheduler and
    worker processes) on the main thread, SIGALRM, whose handler samples there
    (the main thread's own stack is the code the signal interrupted).

    ``threads`` is called before every sample (on the sampling thread, or in the
    signal handler); it must be quick, must not block and must take no lock
    (return a snapshot, e.g. ``dict(labels)``).  Closed buckets are never
    modified again, so :meth:`tree` holds the lock only to list them and to
    merge the open bucket: the sampler never waits long.
    """

    def __init__(
        self,
        threads: ThreadLabels,
        *,
        interval: float = 0.010,
        bucket_seconds: float = 1.0,
        history_seconds: float = 600.0,
        max_nodes: int = DEFAULT_MAX_NODES,
        max_depth: int = MAX_DEPTH,
        name: str = "dsched-profiler",
        driver: str | None = None,
    ) -> None:
        if not interval > 0 or not bucket_seconds > 0 or not history_seconds >= bucket_seconds:
            raise ValueError("need interval > 0 and history_seconds >= bucket_seconds > 0")
        self._threads = threads
        self.interval = interval
        self.bucket_seconds = bucket_seconds
        self.history_seconds = history_seconds
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.name = name
        self._lock = threading.Lock()
        self._history: deque[_Bucket] = deque(maxlen=math.ceil(history_seconds / bucket_seconds))
        self._current: _Bucket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples = self._stacks = self._errors = 0
        self._busy = 0.0
        self._last_error: str | None = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._asked_driver = driver
        self._alarm: AlarmDriver | None = None
        self._skipped = 0
        self._threads_seen = 1
        self._reader = StackReader()

    # -- lifecycle --

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"sampler {self.name!r} is already running")
        driver = choose_driver(self._asked_driver)
        self._stop.clear()
        self._started_at, self._stopped_at = time.perf_counter(), None
        self._alarm = self._thread = None  # a restart may choose the other driver
        if driver == "signal":
            self._alarm = AlarmDriver(self._on_alarm)
            self._alarm.start(self.effective_interval())
        else:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop sampling and wait for the sampler thread (if any) to end (idempotent)."""
        self._stop.set()
        if self._alarm is not None:
            self._alarm.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._started_at is not None and self._stopped_at is None:
            self._stopped_at = time.perf_counter()
        self._reader.forget()

    @property
    def running(self) -> bool:
        if self._alarm is not None:
            return not self._stop.is_set()
        return self._thread is not None and self._thread.is_alive()

    @property
    def driver(self) -> str | None:
        """"signal" or "thread" once started, else None."""
        if self._alarm is not None:
            return "signal"
        return "thread" if self._thread is not None else None

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def effective_interval(self, threads: int | None = None) -> float:
        """The interval now: ``interval``, lengthened in proportion past ``THREADS_AT_FULL_RATE`` threads
        (``threads``, else ``threading.active_count()``, which takes a lock: not in a signal handler).

        Reading the stacks (``sys._current_frames()``) costs in proportion to the
        number of threads in the process, most of it outside the sampling thread:
        in-process clusters of a hundred workers measured +16% run time at 10 ms,
        nothing measurable at 50 ms.  So the cost per second stays that of a
        process with ``THREADS_AT_FULL_RATE`` threads.
        """
        count = threading.active_count() if threads is None else threads
        return self.interval * max(1.0, count / THREADS_AT_FULL_RATE)

    def _run(self) -> None:
        deadline = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # a bug must not end profiling silently: count it
                self._note_error(exc)
            interval = self.effective_interval()
            deadline += interval
            now = time.perf_counter()
            if deadline < now + interval / 4:  # fell behind: sleep a little, never burst
                deadline = now + interval / 4
            self._stop.wait(deadline - now)

    def _on_alarm(self, frame: FrameType | None) -> float:
        """The signal handler's work: a sample with the main thread's stack at ``frame``."""
        if not self._stop.is_set():
            try:
                self.sample_once(interrupted=frame, blocking=False)
            except Exception as exc:  # a bug must not end profiling silently: count it
                self._note_error(exc, blocking=False)
        return self.effective_interval(self._threads_seen)

    # -- sampling --

    def sample_once(
        self, when: float | None = None, *, interrupted: FrameType | None = None, blocking: bool = True
    ) -> int:
        """Take one sample now (filed at wall-clock time ``when``); return the stacks recorded.

        From a signal handler: ``interrupted`` is the frame the signal interrupted
        (this thread is then sampled at that frame rather than skipped), and
        ``blocking=False`` skips the sample if the lock is taken (by the very code
        the signal interrupted, perhaps).
        """
        began = time.thread_time()
        try:
            labels = self._threads()
        except Exception as exc:
            self._note_error(exc, blocking)
            return 0
        me = threading.get_ident()
        if interrupted is None:
            stacks, seen = self._reader.collect(labels, me)
        else:
            stacks, seen = self._reader.collect(labels, -1, (me, interrupted))
        self._threads_seen = seen or self._threads_seen
        when = time.time() if when is None else when
        if not self._lock.acquire(blocking):
            self._skipped += 1
            return 0
        try:
            trees = self._bucket(when).trees
            for labelled, stack in stacks:
                for label in (labelled,) if isinstance(labelled, str) else labelled:
                    tree = trees.get(label)
                    if tree is None:
                        tree = trees[label] = CallTree(self.max_nodes, self.max_depth)
                    tree.add_stack(stack)
            self._samples += 1
            self._stacks += len(stacks)
            self._busy += time.thread_time() - began
        finally:
            self._lock.release()
        return len(stacks)

    def record(self, label: str, stack: Sequence[FrameId], when: float | None = None,
               count: int = 1) -> None:
        """Add ``count`` samples of ``stack`` (root first) under ``label`` at time ``when``."""
        if count < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        with self._lock:
            trees = self._bucket(time.time() if when is None else when).trees
            tree = trees.get(label)
            if tree is None:
                tree = trees[label] = CallTree(self.max_nodes, self.max_depth)
            tree.add_stack(stack, count)

    def _bucket(self, when: float) -> _Bucket:
        """The open bucket for time ``when``, closing the previous one (lock held)."""
        current = self._current
        if current is not None and when < current.start + self.bucket_seconds:
            return current  # also when the clock stepped back: file it in the open bucket
        if current is not None and current.trees:
            self._history.append(current)
        start = math.floor(when / self.bucket_seconds) * self.bucket_seconds
        history = self._history
        while history and history[0].start <= start - self.history_seconds:
            history.popleft()
        self._current = _Bucket(start)
        return self._current

    def _note_error(self, exc: Exception, blocking: bool = True) -> None:
        if not self._lock.acquire(blocking):
            return  # in a signal handler, over a locked section: the error is lost, not the process
        try:
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._lock.release()

    # -- reading --

    def _overlapping(self, start: float | None, stop: float | None) -> Callable[[_Bucket], bool]:
        width = self.bucket_seconds

        def overlaps(bucket: _Bucket) -> bool:
            return (start is None or bucket.start + width > start) and (
                stop is None or bucket.start <= stop
            )

        return overlaps

    def tree(
        self, start: float | None = None, stop: float | None = None,
        label_prefix: str | None = None,
    ) -> CallTree:
        """The samples of the buckets overlapping ``[start, stop]``, of the labels starting
        with ``label_prefix``, as one tree.

        Times are ``time.time()`` seconds; None leaves that end open, and
        ``label_prefix=None`` takes every label.  Buckets are merged newest first
        into a tree of at most ``max_nodes`` nodes, so when a long window holds
        more distinct paths than that, older rare paths fold into their parents.
        """
        overlaps = self._overlapping(start, stop)
        prefix = label_prefix or ""
        result = CallTree(self.max_nodes, self.max_depth)
        with self._lock:
            closed = [b for b in self._history if overlaps(b)]
            current = self._current
            if current is not None and overlaps(current):
                for label, tree in current.trees.items():
                    if label.startswith(prefix):
                        result.merge(tree)
        for bucket in reversed(closed):  # closed buckets are immutable: no lock needed
            for label, tree in bucket.trees.items():
                if label.startswith(prefix):
                    result.merge(tree)
        return result

    def labels(self, start: float | None = None, stop: float | None = None) -> list[str]:
        """The labels sampled in buckets overlapping ``[start, stop]``, sorted."""
        overlaps = self._overlapping(start, stop)
        with self._lock:
            buckets = [b for b in self._history if overlaps(b)]
            if self._current is not None and overlaps(self._current):
                buckets.append(self._current)
            return sorted({label for b in buckets for label in b.trees})

    def overhead(self) -> SamplerStats:
        """Counters: samples taken, stacks recorded, errors, time spent sampling."""
        with self._lock:
            began, ended = self._started_at, self._stopped_at
            running = 0.0 if began is None else (ended or time.perf_counter()) - began
            return SamplerStats(
                samples=self._samples, stacks=self._stacks, errors=self._errors,
                busy_seconds=self._busy, running_seconds=running, last_error=self._last_error,
                interval=self.effective_interval(self._threads_seen if self.driver == "signal" else None),
                skipped=self._skipped, driver=self.driver,
            )


def loop_thread_sampler(
    thread_ident: int,
    *,
    label: str = "event-loop",
    interval: float = 0.010,
    bucket_seconds: float = 1.0,
    history_seconds: float = 600.0,
) -> Sampler:
    """A (not yet started) sampler of one thread, e.g. an event loop's.

    Call ``threading.get_ident()`` on the loop (or take ``LoopThread.thread.ident``)
    and pass it here; the sampler runs on its own thread, never on the loop.
    """
    fixed = {thread_ident: label}
    return Sampler(
        lambda: fixed, interval=interval, bucket_seconds=bucket_seconds,
        history_seconds=history_seconds, name=f"dsched-profiler-{label}",
    )
