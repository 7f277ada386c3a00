"""One sampling thread per process and interval, shared by every scheduler and worker in it.

Each sampler wakes its thread every ``interval`` and takes the GIL from whatever
runs; in a process that hosts a scheduler and a hundred workers (an in-process
cluster), separate samplers would each interrupt the same event loop and read
the same threads' stacks.  Here every *source* (a scheduler, the workers of the
process) registers a label function under a name, and one :class:`Sampler`
reads every thread that any source asked about, once per round, filing the
stack under each source's label (a thread two sources care about, such as an
event loop shared by the scheduler and its in-process workers, is read once and
filed twice).

Sources keep their labels apart by prefix and read their trees back with
``sampler.tree(..., label_prefix=their_prefix)``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from dsched._profiler import Label, Sampler, ThreadLabels

__all__ = ["attach", "attached", "detach", "thread_name"]

_lock = threading.Lock()


class _Shared:
    def __init__(self, interval: float) -> None:
        self.sources: dict[str, ThreadLabels] = {}
        self.sampler = Sampler(self._labels, interval=interval, name=thread_name(interval))

    def _labels(self) -> Mapping[int, Label]:
        sources = list(self.sources.values())
        if len(sources) == 1:
            return sources[0]()
        merged: dict[int, Label] = {}
        for labels in sources:
            for ident, label in labels().items():
                if label is None:
                    continue
                known = merged.get(ident)
                if known is None:
                    merged[ident] = label
                else:
                    as_tuple = (known,) if isinstance(known, str) else known
                    merged[ident] = as_tuple + ((label,) if isinstance(label, str) else label)
        return merged


_shared: dict[float, _Shared] = {}


def thread_name(interval: float) -> str:
    """The name of the sampling thread shared at ``interval`` (one per process and interval)."""
    return f"dsched-profiler-{interval:g}s"


def attach(interval: float, name: str, labels: ThreadLabels) -> Sampler:
    """Register source ``name`` with the process's sampler at ``interval`` (started if new)."""
    with _lock:
        shared = _shared.get(interval)
        if shared is None:
            shared = _shared[interval] = _Shared(interval)
            shared.sampler.start()
        if name in shared.sources:
            raise ValueError(f"a profiling source named {name!r} is attached already")
        shared.sources[name] = labels
        return shared.sampler


def attached(interval: float) -> Sampler:
    """The running sampler at ``interval`` (KeyError if no source is attached at that interval)."""
    with _lock:
        return _shared[interval].sampler


def detach(interval: float, name: str) -> None:
    """Unregister source ``name``; the last source to leave stops the sampling thread."""
    with _lock:
        shared = _shared.get(interval)
        if shared is None or shared.sources.pop(name, None) is None or shared.sources:
            return
        del _shared[interval]
    shared.sampler.stop()  # outside the lock: it joins the sampling thread
