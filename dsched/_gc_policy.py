"""How a scheduler treats CPython's cyclic garbage collector while it serves.

The core breaks its own reference cycles, so reference counting frees its
objects; CPython's automatic collections would otherwise walk every live task
again and again (about as costly as the core itself, see docs/core.md).

* ``"off"`` (a scheduler process): the cyclic GC is disabled while the server
  runs, and :meth:`GcPolicy.maybe_collect` runs one collection - then hands
  freed memory back to the OS - when the server has been idle.
* ``"relaxed"`` (an in-process cluster inside a user's program, whose own
  objects may form cycles): the GC stays on, but its first-generation
  threshold is raised, so that collections run some 70 times less often.
* ``"default"``: the interpreter's settings are left alone.

Servers in one process share the settings: they are applied by the first
server that starts and restored when the last one stops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import time
from collections.abc import Callable
from typing import Final, Literal, TypeAlias

__all__ = ["GcMode", "GcPolicy"]

GcMode: TypeAlias = Literal["off", "relaxed", "default"]

RELAXED_THRESHOLD0: Final = 50_000


class GcPolicy:
    """Applies a :data:`GcMode` for as long as a server runs; ``maybe_collect()`` at idle times."""

    _active: dict[str, int] = {"off": 0, "relaxed": 0}
    _was_enabled = True
    _threshold: tuple[int, int, int] = gc.get_threshold()

    def __init__(self, mode: GcMode = "off", interval: float = 5.0) -> None:
        self.mode = mode
        self.interval = interval
        self._last = time.monotonic()

    def start(self) -> None:
        active = GcPolicy._active
        if self.mode == "off":
            if active["off"] == 0:
                GcPolicy._was_enabled = gc.isenabled()
                gc.disable()
            active["off"] += 1
        elif self.mode == "relaxed":
            if active["relaxed"] == 0:
                GcPolicy._threshold = gc.get_threshold()
                t0, t1, t2 = GcPolicy._threshold
                gc.set_threshold(max(t0, RELAXED_THRESHOLD0), t1, t2)
            active["relaxed"] += 1

    def stop(self) -> None:
        active = GcPolicy._active
        if self.mode == "off":
            active["off"] -= 1
            if active["off"] == 0 and GcPolicy._was_enabled:
                gc.enable()
        elif self.mode == "relaxed":
            active["relaxed"] -= 1
            if active["relaxed"] == 0:
                gc.set_threshold(*GcPolicy._threshold)

    def maybe_collect(self) -> None:
        """At an idle moment: collect (if this policy turned the GC off) and trim malloc."""
        if self.mode != "off":
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            gc.collect()
            _trim_malloc()
            self._last = time.monotonic()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_malloc_trim = _load_malloc_trim() if sys.platform.startswith("linux") else None


def _trim_malloc() -> None:
    """Hand memory freed by a finished graph back to the OS (glibc keeps it otherwise)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
