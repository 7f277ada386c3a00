"""``BatchedSender``: a loop tick's messages to one peer become one frame.

The application calls ``send(msg)`` / ``send_many(msgs)`` - synchronous, no
coroutine, no task, no write - as often as it likes.  The first call after a
flush sets one ``anyio.Event``; the sender's single background task wakes when
the loop next gets to it (after everything already runnable in this tick), takes
the whole queue, calls ``encode(batch)`` once and writes one frame (or, if
``encode`` returns a list of payloads - e.g. to respect a per-frame message
limit - those frames, in order, before taking the queue again).  While that
write is in progress, new messages queue up and go in the next frame, so a slow
peer makes frames bigger, not more numerous.

``send`` must be called from the event loop's thread (from a worker thread, use
``anyio.from_thread.run_sync(sender.send, msg)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from dsched._comm import Comm, CommClosedError

__all__ = ["BatchedSender"]

logger = logging.getLogger("dsched.comm")

T = TypeVar("T")


class BatchedSender(Generic[T]):
    """Coalesces messages of type ``T`` into frames written to ``comm``.

    Run it either as ``async with BatchedSender(comm, encode) as sender:`` (it
    starts its own task and closes - flushing - on exit) or with
    ``tg.start_soon(sender.run)`` in a task group you own, then ``await sender.close()``.

    ``interval`` (seconds, default 0): after waking, wait this long before taking
    the queue, to coalesce over more than one tick.  ``0`` flushes as soon as the
    loop yields, which is what keeps round-trip latency low.

    When the comm fails (or ``encode`` raises), the sender stops, closes the comm,
    calls ``on_error(exc)`` if given, and the next ``send`` raises the
    ``CommClosedError``.  Messages queued then are lost (the peer is gone anyway).

    ``encode(batch)`` gets the queued messages (a list the sender no longer
    touches) and returns one payload, or a list of payloads written as
    consecutive frames.

    ``frames``, ``messages`` and ``bytes`` count what was written (O(1) per frame).
    """

    def __init__(
        self,
        comm: Comm,
        encode: Callable[[list[T]], bytes | list[bytes]],
        *,
        interval: float = 0.0,
        on_error: Callable[[CommClosedError], object] | None = None,
    ) -> None:
        self.comm = comm
        self._encode = encode
        self.interval = interval
        self._on_error = on_error
        self._queue: list[T] = []
        self._wake = anyio.Event()
        self._wake_pending = False
        self._closing = False
        self._running = False
        self._done = anyio.Event()
        self._error: CommClosedError | None = None
        self._task_group: TaskGroup | None = None
        self.frames = 0
        self.messages = 0
        self.bytes = 0

    def __repr__(self) -> str:
        return f"<BatchedSender to {self.comm.peer} queued={len(self._queue)} frames={self.frames}>"

    @property
    def queued(self) -> int:
        """Messages waiting for the next frame."""
        return len(self._queue)

    @property
    def error(self) -> CommClosedError | None:
        """Why the sender stopped, if it stopped on an error."""
        return self._error

    # -- the hot path ----------------------------------------------------------------

    def send(self, msg: T) -> None:
        """Queue one message for the next frame.  Raises ``CommClosedError`` once stopped."""
        if self._closing:
            self._raise_closed()
        self._queue.append(msg)
        if not self._wake_pending:
            self._wake_pending = True
            self._wake.set()

    def send_many(self, msgs: Iterable[T]) -> None:
        """Queue several messages (in order) for the next frame."""
        if self._closing:
            self._raise_closed()
        self._queue.extend(msgs)
        if not self._wake_pending and self._queue:
            self._wake_pending = True
            self._wake.set()

    def _raise_closed(self) -> None:
        if self._error is not None:
            raise CommClosedError(self._error.reason) from self._error
        raise CommClosedError(f"BatchedSender to {self.comm.peer} is closed")

    # -- the background task ---------------------------------------------------------

    async def run(self) -> None:
        """Write frames until ``close()`` (then flush) or a comm error.  Never raises those."""
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            while True:
                await self._wake.wait()
                if self.interval > 0 and not self._closing:
                    await anyio.sleep(self.interval)
                self._wake = anyio.Event()
                self._wake_pending = False
                if self._queue:
                    await self._write_queue()
                if self._closing and not self._queue:
                    return
        except CommClosedError as exc:
            self._fail(exc)
        except Exception as exc:  # encode raised: the peer can no longer be kept in sync
            logger.exception("BatchedSender to %s failed to encode a batch", self.comm.peer)
            self._fail(CommClosedError(f"encoding a batch for {self.comm.peer} failed: {exc!r}"))
            with anyio.CancelScope(shield=True):
                await self.comm.aclose(f"BatchedSender encode failed: {exc!r}")
        finally:
            self._closing = True  # cancelled or finished: later sends raise
            self._running = False
            self._done.set()

    async def _write_queue(self) -> None:
        batch = self._queue
        self._queue = []
        payload = self._encode(batch)
        if isinstance(payload, list):
            for part in payload:
                await self.comm.send_frame(part)
                self.frames += 1
                self.bytes += len(part)
        else:
            await self.comm.send_frame(payload)
            self.frames += 1
            self.bytes += len(payload)
        self.messages += len(batch)

    def _fail(self, exc: CommClosedError) -> None:
        self._closing = True
        self._error = exc
        self._queue = []
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                logger.exception("BatchedSender on_error callback failed")

    async def close(self) -> None:
        """Flush what is queued, then stop.  Returns when the last frame is written
        (or the comm failed).  Idempotent.  Does not close the comm."""
        self._closing = True
        if self._running:
            self._wake.set()
            await self._done.wait()
        elif self._queue and self._error is None:  # never started: flush here
            try:
                await self._write_queue()
            except CommClosedError as exc:
                self._fail(exc)

    # -- as an async context manager -------------------------------------------------

    async def __aenter__(self) -> BatchedSender[T]:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._task_group = tg
        tg.start_soon(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._task_group
        assert tg is not None
        self._task_group = None
        try:
            if exc_type is None:
                await self.close()
            else:
                tg.cancel_scope.cancel()
        finally:
            result = await tg.__aexit__(exc_type, exc, tb)
        return result
