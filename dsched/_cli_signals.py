"""Stopping a long-running command cleanly on SIGINT (Ctrl-C) or SIGTERM.

Inside the event loop, both signals cancel the command's task group so its
``async with`` blocks unwind (a worker retires, a scheduler says goodbye);
the signal is then reported, and a second signal during that unwinding is
left to the default handling (a hard stop), as users expect of Ctrl-C twice.
"""

from __future__ import annotations

import signal
from typing import Final

import anyio
from anyio import CancelScope

__all__ = ["STOP_SIGNALS", "cancel_on_signal", "signal_name"]

STOP_SIGNALS: Final = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


async def cancel_on_signal(scope: CancelScope, received: list[int]) -> None:
    """Wait for SIGINT or SIGTERM, record it in ``received`` and cancel ``scope``.

    Where signal handlers cannot be installed in the loop (not the main
    thread, or Windows), waits forever: the default handlers still apply.
    """
    try:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                received.append(signum)
                scope.cancel()
                return
    except (NotImplementedError, ValueError, RuntimeError):
        await anyio.sleep_forever()
