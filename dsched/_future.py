"""``Future``: a handle on one key held by a client, and ``KeyState``, what futures of a key share.

Several ``Future`` objects may name the same key; they share one
:class:`KeyState` (status, error, watchers, reference count), kept by the
client's :class:`~dsched._client_state.ClientState`.  A state changes only on
the client's event loop thread, when a scheduler message about its key arrives;
reading ``status`` from any thread is safe.

Waiting is not per future: a call that waits (``gather``, ``wait``,
``as_completed``, a done callback) registers one *watcher* on the states it
waits for, and the loop calls ``watcher.key_done(state)`` when a state leaves
"pending".  So 100,000 keys finishing cost 100,000 attribute writes and the
watchers' counters, never 100,000 events or coroutines.

A future is released - the client's hold on its key dropped - when
``release()`` is called or the object is garbage collected.  ``__del__`` may run
in any thread, so it only queues the state and wakes the loop thread-safely;
the loop batches the releases of a tick into one ``ReleaseKeys`` message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, Protocol

from dsched._client_errors import FutureCancelledError, LostDataError
from dsched._serialize import loads_exception, register_ref_type

if TYPE_CHECKING:
    from dsched._client import Client

__all__ = ["CANCELLED", "ERROR", "FINISHED", "LOST", "PENDING", "Future", "KeyState", "Watcher"]

logger = logging.getLogger("dsched.client")

PENDING: Final = "pending"
FINISHED: Final = "finished"
ERROR: Final = "error"
CANCELLED: Final = "cancelled"
LOST: Final = "lost"


class Watcher(Protocol):
    """Something waiting for keys: told once per state, on the loop thread, when it is done."""

    def key_done(self, state: KeyState) -> None: ...


class KeyState:
    """What every future of one key shares.

    ``refs`` counts the live futures (changed under the client state's lock);
    ``exception``/``traceback`` hold a task's pickled exception, ``failure`` an
    exception made on this side (a scheduler failure, a refusal, a
    cancellation).
    """

    __slots__ = ("exception", "failure", "key", "refs", "status", "traceback", "watchers")

    def __init__(self, key: str, status: str = PENDING) -> None:
        self.key = key
        self.status = status
        self.refs = 0
        # One watcher (the common case: a single gather) or a list of them.
        self.watchers: Watcher | list[Watcher] | None = None
        self.exception: bytes | None = None
        self.traceback = ""
        self.failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"<KeyState {self.key!r} {self.status} refs={self.refs}>"

    def done(self) -> bool:
        return self.status != PENDING

    def error(self) -> BaseException:
        """The exception to raise for this key (a fresh one for a remote exception)."""
        if self.exception is not None:
            return loads_exception(self.exception, self.traceback)
        if self.failure is not None:
            return self.failure
        if self.status == CANCELLED:
            return FutureCancelledError(self.key)
        if self.status == LOST:
            return LostDataError(self.key, self.key, "lost-data", f"the data of {self.key!r} was lost")
        return RuntimeError(f"key {self.key!r} is {self.status}, not in error")

    def set_failure(self, status: str, failure: BaseException) -> None:
        self.status = status
        self.failure = failure


class Future:
    """A remote computation's result, held on the cluster for as long as this object lives.

    ``result()`` blocks (in a synchronous client) or returns an awaitable (in an
    asynchronous one, where ``await future`` also works).  ``status`` is
    "pending", "finished", "error", "cancelled" or "lost".
    """

    __slots__ = ("__weakref__", "_released", "_state", "client", "key")

    def __init__(self, key: str, client: Client, state: KeyState) -> None:
        self.key = key
        self.client = client
        self._state = state
        self._released = False

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        """Whether the key is no longer pending (finished, erred, cancelled or lost)."""
        return self._state.status != PENDING

    def cancelled(self) -> bool:
        return self._state.status == CANCELLED

    def result(self, timeout: float | None = None) -> Any:
        """The value (fetched from a worker), or the key's exception raised."""
        return self.client._future_result(self, timeout)

    def exception(self, timeout: float | None = None) -> Any:
        """The exception the key ended with (None if it finished), once it is done."""
        return self.client._future_exception(self, timeout)

    def traceback(self) -> str | None:
        """The remote traceback text of an erred task (None otherwise)."""
        state = self._state
        return state.traceback if state.status == ERROR and state.traceback else None

    def cancel(self, force: bool = False) -> Any:
        """Cancel this key (``Client.cancel([self])``)."""
        return self.client.cancel([self], force=force)

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        """Call ``fn(self)`` once the key is done.

        The callback runs on the client's event loop thread (the background
        thread of a synchronous client): keep it short and never block in it -
        calling ``result()`` there would deadlock a synchronous client.  If the
        key is already done it is called soon, on that same thread.
        """
        self.client._add_done_callback(self, fn)

    def release(self) -> None:
        """Drop this future's hold on the key now (idempotent); the key is
        forgotten once no future of any client holds it."""
        if not self._released:
            self._released = True
            self.client._release_state(self._state)

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            try:
                self.client._release_state(self._state)
            except Exception:  # interpreter shutdown, or a closed client
                pass

    def __await__(self) -> Generator[Any, None, Any]:
        return self.client._future_result_async(self, None).__await__()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Future can only be pickled inside a task's arguments (where it stands for its result); "
            f"key {self.key!r}"
        )

    def __repr__(self) -> str:
        state = self._state
        return f"<Future: {state.status}, key: {self.key}>"



class CallbackWatcher:
    """Runs a user's done callback for one future."""

    __slots__ = ("fn", "future")

    def __init__(self, future: Future, fn: Callable[[Future], object]) -> None:
        self.future = future
        self.fn = fn

    def key_done(self, state: KeyState) -> None:
        try:
            self.fn(self.future)
        except Exception:
            logger.exception("done callback %r of %r raised", self.fn, self.future)


register_ref_type(Future)
