"""Worker memory management: thresholds, the data store it implies, and the monitor.

The policy is Dask's (``distributed.worker.memory.*``), as fractions of the
worker's ``memory_limit``:

* ``target`` (0.6): once *managed* memory - the estimated sizes of the results
  the worker holds - passes it, the store spills least recently used results
  to disk (:class:`~dsched._worker_spill.SpillableStore`);
* ``spill`` (0.7): once *process* memory (RSS) passes it, the monitor spills
  results until process memory is back under ``target`` (or nothing is left to
  spill): the estimates may be wrong, and memory outside results counts too;
* ``pause`` (0.8): past it the worker pauses - it starts no new task (running
  ones finish) and fetches no dependency, but keeps serving its data; the
  scheduler gives it no new task and may move what it has not started.  It
  resumes once process memory is back under ``pause``;
* ``terminate`` (0.95): past it the worker logs an error.  Dask's nanny would
  restart the worker; dsched has no nanny, and killing a worker that may live
  in the user's own process is not ours to do, so the worker goes on (paused).

Each threshold may be ``None`` (or ``False``) to disable it.  With no memory
limit nothing is managed and the worker's store is a plain dict.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Final

import anyio

from dsched._gc_policy import _trim_malloc
from dsched._sizes import format_bytes
from dsched._worker_spill import SpillableStore

__all__ = [
    "MemoryMonitor",
    "MemoryPolicy",
    "make_store",
    "parse_fraction",
    "process_memory",
    "watch_memory",
]

logger = logging.getLogger("dsched.worker.memory")

DEFAULT_TARGET: Final = 0.6
DEFAULT_SPILL: Final = 0.7
DEFAULT_PAUSE: Final = 0.8
DEFAULT_TERMINATE: Final = 0.95
MONITOR_INTERVAL: Final = 0.1
# While paused, collect cyclic garbage (results in reference cycles are freed
# only then) at most every GC_MIN_INTERVAL seconds and in at most GC_MAX_SHARE
# of the time, so that a big heap cannot keep the loop busy collecting.
GC_MIN_INTERVAL: Final = 1.0
GC_MAX_SHARE: Final = 0.05


def process_memory() -> int:
    """Resident memory of this process in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass  # no /proc (not Linux): the next best reading below
    try:  # macOS and other Unixes: the peak, the best the standard library offers
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


def parse_fraction(value: str | float | bool | None, name: str) -> float | None:
    """A threshold: a fraction of the memory limit in (0, 1], or None for "off" (False, "false", "none", "off")."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("false", "none", "off", "no", ""):
            return None
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{name} must be a fraction of the memory limit (such as 0.7) or false, not {value!r}") from None
    elif value is True:
        raise ValueError(f"{name} must be a fraction of the memory limit (such as 0.7) or False, not True")
    else:
        number = float(value)
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{name} must be above 0 and at most 1 (a fraction of the memory limit), not {value!r}")
    return number


@dataclass(frozen=True)
class MemoryPolicy:
    """The memory limit in bytes (0: none) and each threshold as a fraction of it (None: off)."""

    limit: int
    target: float | None = DEFAULT_TARGET
    spill: float | None = DEFAULT_SPILL
    pause: float | None = DEFAULT_PAUSE
    terminate: float | None = DEFAULT_TERMINATE

    def bytes_at(self, fraction: float | None) -> int:
        """``fraction`` of the limit in bytes; 0 when there is no limit or the threshold is off."""
        if fraction is None or self.limit <= 0:
            return 0
        return int(self.limit * fraction)

    @property
    def spills(self) -> bool:
        return self.limit > 0 and (self.target is not None or self.spill is not None)

    @property
    def monitored(self) -> bool:
        return self.limit > 0 and (self.spill is not None or self.pause is not None or self.terminate is not None)


def make_store(policy: MemoryPolicy, local_directory: str | None) -> MutableMapping[str, object]:
    """The worker's data store: spilling to a new temporary directory, or a dict if nothing spills."""
    if not policy.spills:
        return {}
    parent = local_directory or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="dsched-worker-", dir=parent)
    return SpillableStore(directory, policy.bytes_at(policy.target))


class MemoryMonitor:
    """What the worker's loop does every ``MONITOR_INTERVAL`` about process memory.

    :meth:`check` is cheap (one read of the process's memory) and tells whether
    to pause or resume (through ``set_paused``, called only on a change);
    :meth:`needs_spill` whether the worker should run :meth:`spill` (on a
    thread: it pickles and writes files).  ``probe`` measures the process's
    memory in bytes (tests replace it).
    """

    def __init__(
        self,
        policy: MemoryPolicy,
        store: MutableMapping[str, object],
        set_paused: Callable[[bool], None],
        probe: Callable[[], int] = process_memory,
    ) -> None:
        self.policy = policy
        self.store = store
        self.probe = probe
        self._set_paused = set_paused
        self.paused = False
        self.memory = 0  # the last measurement
        self.n_pauses = 0
        self._above_terminate = False
        self._gc_next = 0.0  # monotonic time before which no collection is run
        self._target = policy.bytes_at(policy.target if policy.target is not None else policy.spill)
        self._spill_at = policy.bytes_at(policy.spill)
        self._pause_at = policy.bytes_at(policy.pause)
        self._terminate_at = policy.bytes_at(policy.terminate)
        # The lowest threshold that acts on process memory (0: none).
        self._act_at = min((t for t in (self._spill_at, self._pause_at, self._terminate_at) if t), default=0)

    def check(self) -> int:
        """Measure, pause or resume, warn past ``terminate``; returns the measurement."""
        memory = self.probe()
        if self._act_at and memory > self._act_at:
            # glibc keeps memory freed by spilled or released results and it still
            # counts in RSS: hand it back before acting on the measurement.
            _trim_malloc()
            memory = self.probe()
        self.memory = memory
        limit = self.policy.limit
        if self._pause_at:
            if memory > self._pause_at and not self.paused:
                self.paused = True
                self.n_pauses += 1
                logger.warning(
                    "worker paused: process memory %s is above %.0f%% of its limit %s",
                    format_bytes(memory), 100 * memory / limit, format_bytes(limit),
                )
                self._set_paused(True)
            elif self.paused and memory > self._pause_at:
                self._collect_garbage()
            elif memory <= self._pause_at and self.paused:
                self.paused = False
                logger.warning("worker resumed: process memory %s is back under the pause threshold", format_bytes(memory))
                self._set_paused(False)
        if self._terminate_at:
            above = memory > self._terminate_at
            if above and not self._above_terminate:
                logger.error(
                    "process memory %s is above %.0f%% of the worker's limit %s (the terminate threshold): "
                    "no nanny restarts dsched workers; this one spills what it can and stays paused until "
                    "memory is back under the pause threshold",
                    format_bytes(memory), 100 * memory / limit, format_bytes(limit),
                )
            self._above_terminate = above
        return memory

    def _collect_garbage(self) -> None:
        now = time.monotonic()
        if now < self._gc_next:
            return
        gc.collect()
        took = time.monotonic() - now
        self._gc_next = now + max(GC_MIN_INTERVAL, took / GC_MAX_SHARE)

    def needs_spill(self) -> bool:
        store = self.store
        return (
            bool(self._spill_at)
            and self.memory > self._spill_at
            and isinstance(store, SpillableStore)
            and store.memory_bytes > 0
        )

    def spill(self) -> int:
        """Spill least recently used results until process memory is under target; how many were spilled."""
        store = self.store
        if not isinstance(store, SpillableStore):
            return 0
        spilled = 0
        freed = 0
        while True:
            size = store.evict()
            if size < 0:
                break
            spilled += 1
            freed += size
            _trim_malloc()  # so that what the spilled values held shows in the next measurement
            if self.probe() <= self._target:
                break
        if spilled:
            logger.info(
                "spilled %d results (%s) by process memory; %s still in memory",
                spilled, format_bytes(freed), format_bytes(store.memory_bytes),
            )
        return spilled


async def watch_memory(monitor: MemoryMonitor, interval: float = MONITOR_INTERVAL) -> None:
    """The worker's monitor task: check every ``interval`` seconds, spill on a thread when needed."""
    while True:
        await anyio.sleep(interval)
        monitor.check()
        if monitor.needs_spill():
            await anyio.to_thread.run_sync(monitor.spill)
            monitor.check()  # pause or resume on what spilling achieved, not a tick later
