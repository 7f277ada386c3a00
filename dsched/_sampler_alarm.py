"""Driving a sampler from SIGALRM on the main thread, instead of from a thread of its own.

Why: a sampling thread must take the GIL to read stacks.  When it wakes while
the event loop runs, it takes the GIL at the loop's next system call, and the
loop, back from that call, waits for the sample and for the OS to run it again.
A signal handler runs on the loop's thread itself: no thread is woken and the
GIL changes no hands.  The sample itself costs the same either way (about
100 us in a busy process: docs/profiling.md), so the gain is modest: on the
tree-reduction benchmark, +2.0-4.6% against +3.4-4.7% for the thread.

Python runs signal handlers on the main thread, between two bytecodes, so this
applies where the event loop *is* the main thread (``dsched scheduler``,
``dsched worker``, the processes of a LocalCluster).  A blocking call of the main
thread (the loop's ``select``) is interrupted, samples, and resumes (PEP 475
retries it).

It is used only where it is safe:

* only in processes whose main thread dsched owns: ``dsched scheduler`` and
  ``dsched worker`` (so the processes of a LocalCluster) call
  :func:`use_signal_by_default`; a program that runs a scheduler or a worker
  itself keeps a sampling thread, and its SIGALRM;
* only from the main thread (``signal.signal`` can be called nowhere else), and
  only where SIGALRM has no handler and the real-time interval timer is unused;
* ``DSCHED_PROFILER_DRIVER`` overrides: ``thread`` always, ``auto`` as the CLI
  does, ``signal`` insists (and fails where it cannot be had).

The handler runs in the middle of whatever the main thread was doing, possibly
inside the sampler's own locked sections, so the sampler never blocks in it:
it skips a sample whose lock is taken (``Sampler.sample_once(blocking=False)``).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

__all__ = ["DRIVER_ENV", "AlarmDriver", "choose_driver", "use_signal_by_default"]

DRIVER_ENV: Final = "DSCHED_PROFILER_DRIVER"
_DRIVERS: Final = ("auto", "thread", "signal")
_process_default = "thread"


def use_signal_by_default() -> None:
    """Let samplers started on this process's main thread use SIGALRM ("auto").

    For processes whose main thread dsched owns (its command line's scheduler
    and worker); elsewhere samplers keep a thread of their own.
    """
    global _process_default
    _process_default = "auto"


def _alarm_is_free() -> bool:
    return (
        hasattr(signal, "setitimer")
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


def choose_driver(asked: str | None = None) -> str:
    """"signal" or "thread": what drives a sampler started now, on this thread.

    ``asked`` ("auto": the signal where it can be had, "thread" or "signal"; None: the
    process's default) is overridden by ``$DSCHED_PROFILER_DRIVER``.
    """
    wanted = os.environ.get(DRIVER_ENV) or asked or _process_default
    if wanted not in _DRIVERS:
        raise ValueError(f"{DRIVER_ENV} must be one of {', '.join(_DRIVERS)}, not {wanted!r}")
    if wanted == "thread":
        return "thread"
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and _alarm_is_free():
        return "signal"
    if wanted == "signal":
        where = "SIGALRM or the real-time timer is in use" if on_main else "not on the main thread"
        raise RuntimeError(f"a signal-driven sampler cannot start here: {where}")
    return "thread"


class AlarmDriver:
    """Calls ``tick(interrupted_frame)`` on the main thread every ``interval`` seconds (SIGALRM)."""

    def __init__(self, tick: Callable[[FrameType | None], float]) -> None:
        """``tick`` returns the interval wanted next (the driver re-arms the timer when it changes)."""
        self._tick = tick
        self._interval = 0.0
        self._armed = False
        self._ticking = False
        self._previous: object = signal.SIG_DFL

    def start(self, interval: float) -> None:
        """Arm the timer (call on the main thread)."""
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._armed = True
        self._arm(interval)
        atexit.register(self.stop)

    def stop(self) -> None:
        """Disarm the timer (any thread); on the main thread also give SIGALRM back its handler.

        Elsewhere the handler stays, ignoring alarms: a stray one then does nothing,
        where SIGALRM's default action would end the process.
        """
        if not self._armed:
            return
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        atexit.unregister(self.stop)
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGALRM) == self._on_alarm:
                signal.signal(signal.SIGALRM, self._previous)  # type: ignore[arg-type]

    def _arm(self, interval: float) -> None:
        self._interval = interval
        signal.setitimer(signal.ITIMER_REAL, interval, interval)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        # Python runs handlers between any two bytecodes of the main thread, those
        # of a running handler included: an alarm during a tick would sample the tick.
        if not self._armed or self._ticking:
            return
        self._ticking = True
        try:
            wanted = self._tick(frame)
        finally:
            self._ticking = False
        if wanted != self._interval and self._armed:
            self._arm(wanted)
