"""A worker's statistical profile: its task threads, labelled by task prefix, and its event loop.

The scheduler asks with ``GetProfile`` (a time window and a prefix); the answer
is this worker's call tree for that window, JSON-encoded.  Sampling costs the
worker about 1% of one core at the default 10 ms interval (see
docs/profiling.md); ``profile_interval=None`` turns it off.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Final

import msgspec

import sched_core as sc
from dsched import _protocol as p
from dsched._profiler import CallTree, Sampler

__all__ = ["LOOP_LABEL", "WorkerProfiler"]

LOOP_LABEL: Final = "worker-event-loop"


class WorkerProfiler:
    """Samples ``running`` task threads (``{thread ident: key}``) and the calling (loop) thread."""

    def __init__(self, running: Mapping[int, str], interval: float) -> None:
        self._running = running
        self._loop_thread = threading.get_ident()
        self.sampler = Sampler(self._labels, interval=interval, name="dsched-worker-profiler")

    def _labels(self) -> dict[int, str | None]:
        # A copy first: the task threads change ``running`` while this runs (dict.copy is atomic).
        running = dict(self._running)
        labels: dict[int, str | None] = {ident: sc.key_split(key) for ident, key in running.items()}
        labels[self._loop_thread] = LOOP_LABEL
        return labels

    def start(self) -> None:
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()

    def answer(self, msg: p.GetProfile) -> p.ProfileData:
        tree: CallTree = self.sampler.tree(msg.start, msg.stop, msg.prefix)
        return p.ProfileData(msg.request, msgspec.json.encode(tree.to_json()))
