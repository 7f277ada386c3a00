"""An event loop in a background thread, for the synchronous faces of async code."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal

__all__ = ["LoopThread"]


class LoopThread:
    """An event loop (anyio, asyncio backend) in a daemon thread, driven through a portal.

    A daemon thread rather than ``anyio.from_thread.start_blocking_portal``'s
    executor thread, so that a client or cluster nobody closed never blocks
    interpreter exit.  Used by the synchronous ``Client`` and ``LocalCluster``.
    """

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._portal: BlockingPortal | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()
        if self._portal is None:
            raise RuntimeError(f"the event loop thread {name!r} did not start") from self._error

    @property
    def portal(self) -> BlockingPortal:
        assert self._portal is not None
        return self._portal

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` (a coroutine function or a plain one) on the loop; return its result."""
        return self.portal.call(func, *args)

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with BlockingPortal() as portal:
            self._portal = portal
            self._ready.set()
            await portal.sleep_until_stopped()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (cancelling what still runs there) and wait for the thread."""
        if threading.current_thread() is self.thread or not self.thread.is_alive():
            return
        try:
            self.portal.call(self.portal.stop, True)
        except RuntimeError:  # already stopped
            pass
        self.thread.join(timeout)
