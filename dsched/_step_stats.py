"""How long the scheduler's batches hold its event loop.

Everything on the scheduler's loop - reading sockets, the dashboard's HTTP
requests, heartbeats - waits while one batch of events goes through the core
and its instructions are routed.  A batch is bounded (``chunk_size`` tasks), so
this is a bounded wait, but the bound is worth watching: the longest batch of
the last minute is in ``/api/status`` and ``/metrics``, and a batch of over
a second is logged, as dask.distributed logs an unresponsive event loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Final

__all__ = ["SLOW_STEP_SECONDS", "StepStats"]

logger = logging.getLogger("dsched.scheduler")

SLOW_STEP_SECONDS: Final = 1.0
_WINDOW_SECONDS: Final = 10.0
_WINDOWS: Final = 6  # the longest step is kept per 10 s window, for a minute


class StepStats:
    """Counts the scheduler's batches and keeps the longest of each recent 10-second window."""

    def __init__(self) -> None:
        self.steps = 0
        self.busy_seconds = 0.0
        self._windows: deque[list[float]] = deque(maxlen=_WINDOWS)  # [window start, longest step]

    def step_took(self, seconds: float, now: float | None = None) -> None:
        self.steps += 1
        self.busy_seconds += seconds
        now = time.monotonic() if now is None else now
        start = now - now % _WINDOW_SECONDS
        windows = self._windows
        if windows and windows[-1][0] == start:
            if seconds > windows[-1][1]:
                windows[-1][1] = seconds
        else:
            windows.append([start, seconds])
        if seconds >= SLOW_STEP_SECONDS:
            logger.warning(
                "one batch held the scheduler's event loop for %.2f s (nothing else ran meanwhile: "
                "a smaller chunk_size bounds batches; the /profile-server view shows where the time went)",
                seconds,
            )

    def longest(self, now: float | None = None) -> float:
        """The longest step of the last minute (its 10-second windows), in seconds."""
        now = time.monotonic() if now is None else now
        oldest = now - now % _WINDOW_SECONDS - (_WINDOWS - 1) * _WINDOW_SECONDS
        return max((longest for start, longest in self._windows if start >= oldest), default=0.0)

    def snapshot(self) -> dict[str, float]:
        return {"steps": self.steps, "busy_s": self.busy_seconds, "longest_step_ms_1m": 1000 * self.longest()}
