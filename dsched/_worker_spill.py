"""The worker's data store: results in memory, the least recently used spilled to disk.

:class:`SpillableStore` is the mapping a worker keeps its results in (``Worker.data``).
It holds values in memory until *managed memory* - the sum of their estimated
sizes (``sizeof``) - passes ``target`` bytes, then moves the least recently used
values to disk, one pickled file per key, until it is back under ``target``.
Reading a spilled key loads it back into memory (and makes it the most recently
used), which may spill others.  The memory monitor (``_worker_memory``) also
calls :meth:`SpillableStore.evict` when the *process* memory is too high, whatever
the estimates say.

Nothing is ever lost to spilling:

* a value that cannot be pickled stays in memory (counted, never retried);
* a failed disk write (disk full, directory gone) keeps the value in memory,
  logs once, and disk writes are not retried for ``DISK_RETRY_SECONDS``;
* a deleted key's file is removed at once; :meth:`close` removes the directory.

The store is used from the event loop and from the task threads at once, so
every operation holds one lock, disk reads and writes included: an operation
may wait for another thread's spilling (pickling and writing the values that
bring managed memory back under ``target``).  Membership tests, ``len`` and
reading a value that is in memory - a task's every dependency, usually - take
no lock.

A value bigger than ``target`` on its own is read from disk without being moved
back to memory (it would be spilled again at once).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Final

from dsched._serialize import dumps_value, loads_value, sizeof

__all__ = ["SpillableStore"]

logger = logging.getLogger("dsched.worker.memory")

DISK_RETRY_SECONDS: Final = 5.0


class SpillableStore(MutableMapping[str, object]):
    """A mapping that spills least recently used values to files in ``directory``.

    ``target``: managed bytes to stay under (0: spill only when :meth:`evict`
    is called).  ``directory`` is created if needed and removed by
    :meth:`close`.  Attributes the worker reports (plain ints, read at any
    time): ``memory_bytes`` (managed bytes in memory), ``spilled_bytes`` (the
    same estimate for the values on disk), ``disk_bytes`` (their files' sizes),
    ``n_spilled`` / ``n_unspilled`` (moves to and from disk so far),
    ``n_read_through`` (reads of values too big to move back to memory),
    ``n_unpicklable`` (values kept in memory because they do not pickle).
    """

    def __init__(
        self,
        directory: str,
        target: int = 0,
        *,
        dumps: Callable[[object], bytes] = dumps_value,
        loads: Callable[[bytes], object] = loads_value,
        measure: Callable[[object], int] = sizeof,
    ) -> None:
        self.directory = directory
        self.target = target
        self._dumps = dumps
        self._loads = loads
        self._measure = measure
        self._lock = threading.Lock()
        self._fast: OrderedDict[str, object] = OrderedDict()  # oldest use first
        self._pinned: dict[str, object] = {}  # values that do not pickle: memory only
        self._sizes: dict[str, int] = {}  # every key -> its estimated size in memory
        self._slow: dict[str, tuple[str, int]] = {}  # spilled key -> (file, bytes on disk)
        self._file_counter = 0
        self._disk_failed_at = -DISK_RETRY_SECONDS
        self._disk_failure_logged = False
        self._closed = False
        self.memory_bytes = 0
        self.spilled_bytes = 0
        self.disk_bytes = 0
        self.n_spilled = 0
        self.n_unspilled = 0
        self.n_unpicklable = 0
        self.n_read_through = 0
        os.makedirs(directory, exist_ok=True)

    def __repr__(self) -> str:
        return (
            f"<SpillableStore {len(self)} keys: {len(self._fast) + len(self._pinned)} in memory "
            f"({self.memory_bytes} B), {len(self._slow)} on disk ({self.spilled_bytes} B)>"
        )

    # -- the mapping --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._sizes))

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __getitem__(self, key: str) -> object:
        fast = self._fast
        try:
            # The common case takes no lock: each OrderedDict operation is atomic
            # under the GIL, and a spill racing with this read only leaves the
            # value's use unrecorded (KeyError: it left memory; read it below).
            value = fast[key]
            fast.move_to_end(key)
            return value
        except KeyError:
            pass
        with self._lock:
            if key in fast:
                fast.move_to_end(key)
                return fast[key]
            if key in self._pinned:
                return self._pinned[key]
            if key not in self._slow:
                raise KeyError(key)
            if self._sizes[key] > self.target > 0:
                self.n_read_through += 1
                return self._read(self._slow[key][0])
            value = self._unspill(key)
            self._spill_to(self.target)
            return value

    def __setitem__(self, key: str, value: object) -> None:
        size = self._measure(value)
        with self._lock:
            if key in self._sizes:
                self._discard(key)
            self._fast[key] = value
            self._sizes[key] = size
            self.memory_bytes += size
            if self.memory_bytes > self.target > 0:
                self._spill_to(self.target)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if key not in self._sizes:
                raise KeyError(key)
            self._discard(key)

    def pop(self, key: str, *default: object) -> object:
        """Remove ``key`` and return its value; a spilled value is read back from disk first.

        To drop a key without reading it, ``del store[key]``.
        """
        with self._lock:
            if key not in self._sizes:
                if default:
                    return default[0]
                raise KeyError(key)
            value = self._fast[key] if key in self._fast else self._pinned.get(key, _MISSING)
            if value is _MISSING:
                value = self._read(self._slow[key][0])
            self._discard(key)
            return value

    # -- what the worker asks -----------------------------------------------------------

    def is_spilled(self, key: str) -> bool:
        """True if ``key``'s value is on disk now."""
        return key in self._slow

    def size_of(self, key: str) -> int:
        """The estimated in-memory size of ``key``'s value, wherever it is."""
        return self._sizes[key]

    def evict(self) -> int:
        """Spill the least recently used value; its estimated size, or -1 if none could be."""
        with self._lock:
            return self._spill_oldest()

    def close(self) -> None:
        """Drop every value and remove the spill directory."""
        with self._lock:
            self._closed = True
            self._fast.clear()
            self._pinned.clear()
            self._slow.clear()
            self._sizes.clear()
            self.memory_bytes = self.spilled_bytes = self.disk_bytes = 0
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- under the lock -----------------------------------------------------------------

    def _discard(self, key: str) -> None:
        size = self._sizes.pop(key, None)
        if size is None:
            return
        if self._fast.pop(key, _MISSING) is not _MISSING or self._pinned.pop(key, _MISSING) is not _MISSING:
            self.memory_bytes -= size
            return
        filename, on_disk = self._slow.pop(key)
        self.spilled_bytes -= size
        self.disk_bytes -= on_disk
        self._remove_file(filename)

    def _spill_to(self, target: int) -> None:
        if target <= 0:
            return
        while self.memory_bytes > target and self._fast:
            if self._spill_oldest() < 0:
                return

    def _spill_oldest(self) -> int:
        """Move the least recently used spillable value to disk; its size, or -1."""
        if self._closed or time.monotonic() - self._disk_failed_at < DISK_RETRY_SECONDS:
            return -1
        fast = self._fast
        while fast:
            # popitem is one atomic step for lock-free readers: while the value is
            # pickled and written they miss it and wait for the lock, then find it
            # on disk (or back in memory).
            key, value = fast.popitem(last=False)
            try:
                payload = self._dumps(value)
            except Exception as exc:
                # It cannot be spilled, ever: keep it in memory, out of the LRU order.
                self._pinned[key] = value
                self.n_unpicklable += 1
                logger.info("%r (a %s) cannot be spilled, kept in memory: %s", key, type(value).__qualname__, exc)
                continue
            filename = self._next_file()
            try:
                with open(filename, "wb") as f:
                    f.write(payload)
            except OSError as exc:
                fast[key] = value
                fast.move_to_end(key, last=False)  # still the least recently used
                self._disk_failed(filename, exc)
                return -1
            size = self._sizes[key]
            self._slow[key] = (filename, len(payload))
            self.memory_bytes -= size
            self.spilled_bytes += size
            self.disk_bytes += len(payload)
            self.n_spilled += 1
            return size
        return -1

    def _read(self, filename: str) -> object:
        with open(filename, "rb") as f:
            return self._loads(f.read())

    def _unspill(self, key: str) -> object:
        filename, on_disk = self._slow[key]
        value = self._read(filename)
        del self._slow[key]
        size = self._sizes[key]
        self.spilled_bytes -= size
        self.disk_bytes -= on_disk
        self.memory_bytes += size
        self._fast[key] = value
        self.n_unspilled += 1
        self._remove_file(filename)
        return value

    def _next_file(self) -> str:
        self._file_counter += 1
        return os.path.join(self.directory, f"{self._file_counter}.pkl")

    def _disk_failed(self, filename: str, exc: OSError) -> None:
        self._disk_failed_at = time.monotonic()
        self._remove_file(filename)
        if not self._disk_failure_logged:
            self._disk_failure_logged = True
            logger.error(
                "spilling to %s failed (%s): values stay in memory; retrying every %.0f s",
                self.directory,
                exc,
                DISK_RETRY_SECONDS,
            )

    @staticmethod
    def _remove_file(filename: str) -> None:
        try:
            os.unlink(filename)
        except OSError:
            pass  # never written, or the directory is gone already


_MISSING: Final = object()
