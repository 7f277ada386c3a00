"""``wait`` and ``as_completed`` over futures, as in dask.distributed.

Both register one watcher per call on the futures' shared key states (see
:mod:`dsched._future`) instead of a task or event per future.  The client's
event loop tells the watcher when a key is done; the caller's thread (a
synchronous client) or coroutine (an asynchronous one) waits on a single
condition or event.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import anyio

from dsched._future import FINISHED, Future, KeyState
from dsched._future_sequence import FutureSequence

if TYPE_CHECKING:
    from dsched._client import Client

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "DoneAndNotDoneFutures", "as_completed", "wait"]

ALL_COMPLETED: Final = "ALL_COMPLETED"
FIRST_COMPLETED: Final = "FIRST_COMPLETED"
FIRST_EXCEPTION: Final = "FIRST_EXCEPTION"


class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def _as_list(fs: Future | Iterable[Future]) -> list[Future]:
    if isinstance(fs, FutureSequence):
        return fs.futures()  # made in bulk
    return [fs] if isinstance(fs, Future) else list(fs)


def wait(fs: Future | Iterable[Future], timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
    """Wait until all (or the first, or the first erred) of ``fs`` are done.

    Returns ``DoneAndNotDoneFutures(done, not_done)``; raises ``TimeoutError``
    after ``timeout`` seconds.  With an asynchronous client, returns an awaitable.
    """
    futures = _as_list(fs)
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION, not {return_when!r}")
    if not futures:
        return DoneAndNotDoneFutures(set(), set())
    client = futures[0].client
    if client.asynchronous:
        return _wait_async(client, futures, timeout, return_when)
    client._call(_wait_states, client, [f._state for f in futures], timeout, return_when)
    return _split(futures)


async def _wait_async(
    client: Client, futures: list[Future], timeout: float | None, return_when: str
) -> DoneAndNotDoneFutures:
    await _wait_states(client, [f._state for f in futures], timeout, return_when)
    return _split(futures)


async def _wait_states(client: Client, states: list[KeyState], timeout: float | None, return_when: str) -> None:
    count = 1 if return_when == FIRST_COMPLETED else None
    with anyio.fail_after(timeout):
        await client._link.wait_done(states, count, stop_on_error=return_when == FIRST_EXCEPTION)


def _split(futures: list[Future]) -> DoneAndNotDoneFutures:
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if f not in done})


class _Member:
    """Tells its ``as_completed`` when one future is done."""

    __slots__ = ("future", "owner")

    def __init__(self, owner: as_completed, future: Future) -> None:
        self.owner = owner
        self.future = future

    def key_done(self, state: KeyState) -> None:
        self.owner._completed(self.future)


class as_completed:  # noqa: N801  (Dask's name)
    """Iterate over futures in the order they finish; more may be ``add``-ed meanwhile.

    ``for future in as_completed(futures):`` (synchronous client) or
    ``async for future in as_completed(futures):`` (asynchronous).  With
    ``with_results=True`` it yields ``(future, result)`` pairs; an erred
    future's exception is then raised, unless ``raise_errors=False`` (then the
    exception is yielded as the result).
    """

    def __init__(
        self, futures: Iterable[Future] | None = None, with_results: bool = False, raise_errors: bool = True
    ) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._cond = threading.Condition()
        self._done: deque[Future] = deque()
        self._outstanding = 0
        self._event: anyio.Event | None = None
        for future in futures or ():
            self.add(future)

    def add(self, future: Future) -> None:
        """Watch one more future."""
        with self._cond:
            self._outstanding += 1
        state = future._state
        future.client._on_loop(future.client._watch, [state], _Member(self, future))

    def update(self, futures: Iterable[Future]) -> None:
        for future in futures:
            self.add(future)

    def _completed(self, future: Future) -> None:  # on the client's loop thread
        with self._cond:
            self._done.append(future)
            self._cond.notify_all()
        if self._event is not None:
            self._event.set()

    def count(self) -> int:
        """Futures not yet yielded."""
        with self._cond:
            return self._outstanding

    def is_empty(self) -> bool:
        return self.count() == 0

    def has_ready(self) -> bool:
        with self._cond:
            return bool(self._done)

    def clear(self) -> None:
        with self._cond:
            self._done.clear()
            self._outstanding = 0

    def _take(self) -> Future:
        self._outstanding -= 1
        return self._done.popleft()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._cond:
            while not self._done:
                if self._outstanding == 0:
                    raise StopIteration
                self._cond.wait()
            future = self._take()
        if not self.with_results:
            return future
        if future.status != FINISHED and not self.raise_errors:
            return (future, future._state.error())
        return (future, future.result())

    def next_batch(self, block: bool = True) -> list[Any]:
        """Everything done so far (at least one future if ``block``)."""
        batch: list[Any] = []
        if block:
            try:
                batch.append(next(self))
            except StopIteration:
                return batch
        while self.has_ready():
            batch.append(next(self))
        return batch

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._cond:
                if self._done:
                    future = self._take()
                    break
                if self._outstanding == 0:
                    raise StopAsyncIteration
                self._event = anyio.Event()
            await self._event.wait()
        if not self.with_results:
            return future
        if future.status != FINISHED and not self.raise_errors:
            return (future, future._state.error())
        return (future, await future)

    def __repr__(self) -> str:
        return f"<as_completed: waiting={self.count()} done={len(self._done)}>"
