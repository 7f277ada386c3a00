"""A worker's statistical profile: its task threads, labelled by task prefix, and its event loop.

The scheduler asks with ``GetProfile`` (a time window and a prefix); the answer
is this worker's call tree for that window, JSON-encoded.

Workers of one process share one sampling thread (an in-process cluster may
run a hundred workers; a sampler each would wake a hundred threads every
10 ms, and each would read every thread's stack).  Each worker registers its
threads under a label namespace of its own, ``"<n>/<prefix>"``; the event
loop they share is labelled once, ``"*/worker-event-loop"``, and belongs to
every worker's profile.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Final

import msgspec

import sched_core as sc
from dsched import _protocol as p
from dsched._profiler import CallTree, Sampler

__all__ = ["LOOP_LABEL", "WorkerProfiler"]

LOOP_LABEL: Final = "worker-event-loop"
_SHARED: Final = "*/"

_lock = threading.Lock()
_samplers: dict[float, _SharedSampler] = {}  # by interval: one per process and interval
_namespaces = itertools.count()


class _SharedSampler:
    """One Sampler for every worker of this process that samples at ``interval``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.workers: dict[str, WorkerProfiler] = {}
        self.sampler = Sampler(self._labels, interval=interval, name="dsched-worker-profiler")

    def _labels(self) -> dict[int, str | None]:
        labels: dict[int, str | None] = {}
        for namespace, worker in list(self.workers.items()):
            # A copy first: the task threads change ``running`` meanwhile (dict.copy is atomic).
            for ident, key in dict(worker.running).items():
                labels[ident] = namespace + sc.key_split(key)
            labels[worker.loop_thread] = _SHARED + LOOP_LABEL
        return labels


class WorkerProfiler:
    """Samples ``running`` task threads (``{thread ident: key}``) and the calling (loop) thread."""

    def __init__(self, running: Mapping[int, str], interval: float) -> None:
        self.running = running
        self.loop_thread = threading.get_ident()
        self.interval = interval
        self.namespace = f"{next(_namespaces)}/"
        self._shared: _SharedSampler | None = None

    @property
    def sampler(self) -> Sampler | None:
        """The sampler this worker shares with the other workers of its process (None when stopped)."""
        shared = self._shared
        return shared.sampler if shared is not None else None

    def start(self) -> None:
        with _lock:
            shared = _samplers.get(self.interval)
            if shared is None:
                shared = _samplers[self.interval] = _SharedSampler(self.interval)
                shared.sampler.start()
            shared.workers[self.namespace] = self
            self._shared = shared

    def stop(self) -> None:
        with _lock:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.workers.pop(self.namespace, None)
            if shared.workers:
                return
            del _samplers[self.interval]
        shared.sampler.stop()  # outside the lock: it joins the sampling thread

    def tree(self, start: float | None, stop: float | None, prefix: str | None) -> CallTree:
        """This worker's tasks whose prefix starts with ``prefix`` (and, unless a prefix is given,
        the event loop), in the window [start, stop]."""
        shared = self._shared
        if shared is None:
            return CallTree()
        tree = shared.sampler.tree(start, stop, self.namespace + (prefix or ""))
        if prefix is None:
            tree.merge(shared.sampler.tree(start, stop, _SHARED))
        return tree

    def answer(self, msg: p.GetProfile) -> p.ProfileData:
        tree = self.tree(msg.start, msg.stop, msg.prefix)
        return p.ProfileData(msg.request, msgspec.json.encode(tree.to_json()))
