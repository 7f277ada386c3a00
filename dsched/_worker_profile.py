"""A worker's statistical profile: its task threads, labelled by task prefix, and its event loop.

The scheduler asks with ``GetProfile`` (a time window and a prefix); the answer
is this worker's call tree for that window, JSON-encoded.

Workers of one process share one sampling thread, with the process's scheduler
if it has one (``dsched._shared_sampler``: an in-process cluster may run a
hundred workers; a sampler each would wake a hundred threads every 10 ms, and
each would read every thread's stack).  Each worker registers its
threads under a label namespace of its own, ``"<n>/<prefix>"``; the event
loop they share is labelled once, ``"*/worker-event-loop"``, and belongs to
every worker's profile.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Mapping
from typing import Final

import msgspec

import sched_core as sc
from dsched import _protocol as p
from dsched._profiler import CallTree, Sampler
from dsched._shared_sampler import attach, attached, detach

__all__ = ["LOOP_LABEL", "WorkerProfiler"]

LOOP_LABEL: Final = "worker-event-loop"
_SHARED: Final = "*/"

_lock = threading.Lock()
_workers: dict[float, dict[str, WorkerProfiler]] = {}  # by interval, then namespace
_namespaces = itertools.count()
_SOURCE: Final = "workers"


def _labels_of(workers: dict[str, WorkerProfiler]) -> dict[int, str | None]:
    """The running task threads of every worker (labelled by namespace and prefix), and their loops."""
    labels: dict[int, str | None] = {}
    for namespace, worker in list(workers.items()):
        running = worker.running
        if running:
            for ident, key in dict(running).items():
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
        self.sampler: Sampler | None = None
        """The process's shared sampler (dsched._shared_sampler) while started, else None."""

    def start(self) -> None:
        # Under the lock throughout, so that a worker starting while the last one
        # stops never finds the source half detached.
        with _lock:
            workers = _workers.get(self.interval)
            if workers is None:
                workers = _workers[self.interval] = {}
                sampler = attach(self.interval, _SOURCE, functools.partial(_labels_of, workers))
            else:
                sampler = attached(self.interval)
            workers[self.namespace] = self
            self.sampler = sampler

    def stop(self) -> None:
        with _lock:
            if self.sampler is None:
                return
            self.sampler = None
            workers = _workers[self.interval]
            del workers[self.namespace]
            if not workers:
                del _workers[self.interval]
                detach(self.interval, _SOURCE)

    def tree(self, start: float | None, stop: float | None, prefix: str | None) -> CallTree:
        """This worker's tasks whose prefix starts with ``prefix`` (and, unless a prefix is given,
        the event loop), in the window [start, stop]."""
        sampler = self.sampler
        if sampler is None:
            return CallTree()
        tree = sampler.tree(start, stop, self.namespace + (prefix or ""))
        if prefix is None:
            tree.merge(sampler.tree(start, stop, _SHARED))
        return tree

    def answer(self, msg: p.GetProfile) -> p.ProfileData:
        tree = self.tree(msg.start, msg.stop, msg.prefix)
        return p.ProfileData(msg.request, msgspec.json.encode(tree.to_json()))
