"""Reading threads' stacks for the sampler (``dsched._profiler``): frames to function identities.

A sample walks each wanted thread's frames from the running one to the root.
In a busy process that walk is most of a sample's cost (about 60 us for a
20-frame event-loop stack, against 4 us in a tight loop: after 10 ms of other
work the caches are cold, and each frame without a frame object gets one), and
most of it is the same every time: the command line's, anyio's and asyncio's
frames down to ``run_forever`` outlive every sample.  So a :class:`StackReader`
keeps, per thread, one *anchor*: a frame it found on that thread's stack, held,
with the identities from the root down to it.  A function's frame keeps its
callers while it runs (a generator's or coroutine's does not: it is never an
anchor), and holding it keeps it (and its ``id``) from being reused, so
a walk that meets the anchor stops there and takes the rest from it.  A walk
that does not meet it (the anchor's call returned) moves the anchor one frame
up, which soon settles on a frame that lasts.  An anchor is let go when its
thread is no longer wanted; the one it holds pins that call's locals until the
next sample of the thread at most.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import operator
import sys
import threading
from collections.abc import Callable, Mapping
from types import CodeType, FrameType
from typing import Final, TypeAlias, cast

__all__ = ["FrameId", "Label", "StackReader", "current_frames"]

FrameId: TypeAlias = tuple[str, int, str]
"""A function: ``(co_filename, co_firstlineno, co_name)``."""

Label: TypeAlias = str | tuple[str, ...] | None
"""A thread's label; a tuple files its stack under each of several labels; None skips the thread."""

LabelledStack: TypeAlias = tuple[str | tuple[str, ...], list[FrameId]]

_WALK_LIMIT: Final = 4_096
_RESUMABLE: Final = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR
_THREADING_FILE: Final = threading.Thread.run.__code__.co_filename
_BOOTSTRAP: Final = frozenset({"_bootstrap", "_bootstrap_inner", "run"})


# What deadlocked Dask (dask/distributed#8616, CPython gh-106883 and gh-116969):
# on Python 3.11 ``sys._current_frames()`` holds the runtime's thread-list lock
# (HEAD_LOCK) while it allocates a frame object per thread, and in 3.11 an
# allocation can start a cyclic garbage collection right there.  The collection
# runs finalizers (``__del__``, weakref callbacks, ``threading.local`` teardown),
# which can release the GIL or need HEAD_LOCK themselves; meanwhile another
# thread holding the GIL (one starting or exiting, e.g. the event loop's
# executor threads) waits for HEAD_LOCK: each thread waits for the other's lock
# forever.  Dask's profiler sampled the event loop thread that way every 10 ms,
# and Dask ended up disabling it on 3.11 (dask/distributed#8916).  3.12 runs the
# collector only between bytecodes, never inside an allocation, so it is safe.
#
# So on 3.11 the GC is paused around the call.  Pausing it from Python would
# race with other threads (``GcPolicy`` and ``gc_paused`` read ``gc.isenabled()``
# and could see the sampler's transient "off" and restore it later): the GIL can
# switch threads after any bytecode.  The read, pause, call and conditional
# restore therefore run as one chain of C calls driven by ``list()`` (map, tee
# and chain iterators calling builtins), during which no bytecode runs, so no
# other thread can run or observe the paused state.
#
# The rest of a sample only reads code attributes: no ``linecache`` (which can
# import a module's loader to fetch its source and take the import lock, and
# does file I/O), no ``threading.enumerate()``, no logging, no imports.
_GC_IN_ALLOCATIONS: Final = sys.version_info < (3, 12)
_RESTORE_GC: Final[dict[object, Callable[[], object]]] = {True: gc.enable, False: gc.isenabled}


def _current_frames_gc_paused() -> dict[int, FrameType]:
    """``sys._current_frames()`` with the cyclic GC paused, atomically with respect to the GIL."""
    was_on, restore = itertools.tee(map(operator.call, (gc.isenabled,)))
    calls: tuple[Callable[[], object], ...] = (gc.disable, sys._current_frames)
    try:
        results = list(itertools.chain(
            was_on,
            map(operator.call, calls),
            map(operator.call, map(_RESTORE_GC.__getitem__, restore)),
        ))
    except BaseException:  # MemoryError inside: do not leave the GC off
        if next(restore, False):
            gc.enable()
        raise
    return cast("dict[int, FrameType]", results[2])


def current_frames() -> dict[int, FrameType]:
    return _current_frames_gc_paused() if _GC_IN_ALLOCATIONS else sys._current_frames()


# Code objects are few and long-lived, so a frame's identity is one lookup, not
# a new tuple; the cache is dropped whole if code is generated without end.
_FRAME_IDS: Final[dict[CodeType, FrameId]] = {}
_MAX_FRAME_IDS: Final = 100_000


def _frame_id(code: CodeType) -> FrameId:
    if len(_FRAME_IDS) >= _MAX_FRAME_IDS:
        _FRAME_IDS.clear()
    ident = _FRAME_IDS[code] = (code.co_filename, code.co_firstlineno, code.co_name)
    return ident


def _trimmed(stack: list[FrameId]) -> list[FrameId]:
    """``stack`` without the threading bootstrap frames at its root."""
    start = 0
    while start < len(stack) and stack[start][0] == _THREADING_FILE and stack[start][2] in _BOOTSTRAP:
        start += 1
    return stack[start:] if start else stack


class _Anchor:
    __slots__ = ("frame", "depth", "stack")

    def __init__(self, frame: FrameType, depth: int, stack: list[FrameId]) -> None:
        self.frame = frame  # held: its callers cannot change, its id cannot be reused
        self.depth = depth  # its index from the root
        self.stack = stack  # the identities from the root to it, untrimmed


class StackReader:
    """Stacks of labelled threads, walked only as far as each thread's anchor (see the module)."""

    def __init__(self) -> None:
        self._anchors: dict[int, _Anchor] = {}

    def forget(self) -> None:
        """Let every held frame go (the sampler stopped)."""
        self._anchors = {}

    def stack(self, ident: int, frame: FrameType) -> list[FrameId]:
        """The identities of ``frame`` (thread ``ident``'s) and its callers, root first, trimmed."""
        anchor = self._anchors.get(ident)
        target = anchor.frame if anchor is not None else None
        frames: list[FrameType] = []
        append = frames.append
        walked: FrameType | None = frame
        for _ in range(_WALK_LIMIT):
            if walked is None or walked is target:
                break
            append(walked)
            walked = walked.f_back
        known = _FRAME_IDS.get
        ids = [known(f.f_code) or _frame_id(f.f_code) for f in reversed(frames)]
        if anchor is not None and walked is target:
            return _trimmed(anchor.stack + [_frame_id_of(anchor.frame)] + ids)
        del walked
        # Missed (or none yet): anchor one frame above the old one, or two above the leaf,
        # and never on a generator's or coroutine's frame: those change callers when resumed.
        depth = min(anchor.depth - 1 if anchor is not None else len(ids) - 3, len(ids) - 2)
        while depth >= 0 and frames[len(frames) - 1 - depth].f_code.co_flags & _RESUMABLE:
            depth -= 1
        if depth >= 0:
            self._anchors[ident] = _Anchor(frames[len(frames) - 1 - depth], depth, ids[:depth])
        else:
            self._anchors.pop(ident, None)
        return _trimmed(ids)

    def collect(
        self, labels: Mapping[int, Label], skip: int, interrupted: tuple[int, FrameType | None] | None = None
    ) -> tuple[list[LabelledStack], int]:
        """The labelled stacks of the threads in ``labels`` that are running Python code, and the
        number of threads that are (0 when that was not read: no thread is wanted, or only the
        interrupted one).

        ``skip`` is left out (the sampling thread); ``interrupted`` is ``(ident, frame)`` of a thread
        sampling itself from a signal handler, whose stack is taken from ``frame`` (the code the
        signal interrupted) rather than from the handler's own frames.
        """
        # Copied first (one C call for a dict), so that other threads may change it meanwhile.
        wanted = [(i, label) for i, label in list(labels.items()) if label is not None and i != skip]
        if len(self._anchors) > len(wanted):
            keep = {i for i, _ in wanted}
            self._anchors = {i: a for i, a in self._anchors.items() if i in keep}
        if not wanted:
            return [], 0
        if interrupted is not None and all(i == interrupted[0] for i, _ in wanted):
            # Only the interrupted thread (a scheduler's loop; a worker's, between tasks):
            # its frame is at hand, and reading every thread's would cost more than the walk.
            ident, frame = interrupted
            return ([(wanted[0][1], self.stack(ident, frame))] if frame is not None else []), 0
        frames = current_frames()
        try:
            if interrupted is not None:
                ident, frame = interrupted
                if frame is None:
                    frames.pop(ident, None)
                else:
                    frames[ident] = frame
            stacks: list[LabelledStack] = []
            for ident, label in wanted:
                frame = frames.get(ident)
                if frame is not None:  # None: the thread has exited (or runs no Python code yet)
                    stacks.append((label, self.stack(ident, frame)))
                del frame
            return stacks, len(frames)
        finally:
            # Frames pin every local variable of the sampled threads: let them go now.
            del frames


def _frame_id_of(frame: FrameType) -> FrameId:
    code = frame.f_code
    return _FRAME_IDS.get(code) or _frame_id(code)
