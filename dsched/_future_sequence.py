"""``FutureSequence``: the futures of a ``map`` sent as one layer, made only when used.

A map over a million inputs used to hand back a million ``Future`` objects,
each with its key string and shared :class:`~dsched._future.KeyState`: about
a second and a half of the caller's time spent on bookkeeping, more than
pickling the inputs.  A :class:`FutureSequence` stands for them instead.  The
client holds the layer as one :class:`~dsched._layer_hold.LayerHold` (its name, its size and how
many sequences hold it), which counts as one reference on every key
``"('<name>', i)"``; a ``Future`` (and its state) is made the first time
index ``i`` is used, and kept, so ``seq[i] is seq[i]``.

Until then what the scheduler says about key ``i`` is kept compactly in the
hold: one byte per key for "finished"; anything rarer (an error, a lost key,
a cancellation) makes the key's state on the client's loop thread.  Either
way a future made late reports what happened before it existed.

Dropping the sequence (garbage collection or :meth:`FutureSequence.release`)
drops the layer's reference: the loop thread then releases every key that no
live ``Future`` still holds, in one ``ReleaseKeys``.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, cast, overload

from dsched._client_tasks import gc_paused
from dsched._future import Future, KeyState
from dsched._layer_hold import LayerHold, layer_key_index

if TYPE_CHECKING:
    from dsched._client import Client

__all__ = ["FutureSequence"]

# Futures made per lock acquisition while iterating (iteration makes them in runs).
_RUN: Final = 4096


class FutureSequence(Sequence[Future]):
    """The futures of a ``map`` sent as one layer: an immutable sequence, each ``Future`` made when used.

    It behaves as the list of futures a smaller ``map`` returns (indexing,
    negative indices, slices as lists, iteration, ``len``, ``+`` with lists,
    ``gather``/``wait``/``as_completed``/``cancel``, an argument of ``submit``
    or ``map``), but it is not a ``list`` and cannot be changed.  While it
    lives the client holds every key of the layer; ``key(i)`` and ``keys()``
    name keys without making futures.
    """

    __slots__ = ("__weakref__", "_client", "_futures", "_hold", "_released")

    def __init__(self, client: Client, hold: LayerHold) -> None:
        self._client = client
        self._hold = hold
        self._futures: list[Future | None] | None = None
        self._released = False

    # -- what it names, without making futures -------------------------------------------

    @property
    def name(self) -> str:
        """The layer's name (its keys are ``"('<name>', i)"``)."""
        return self._hold.name

    def key(self, index: int) -> str:
        """The key of future ``index`` (negative indices count from the end)."""
        return self._hold.key(self._position(index))

    def keys(self) -> list[str]:
        """Every key, in order."""
        hold = self._hold
        return [f"('{hold.name}', {i})" for i in range(hold.n)]

    def __len__(self) -> int:
        return self._hold.n

    def _position(self, index: Any) -> int:
        n = self._hold.n
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"FutureSequence index {index} out of range ({n} futures)")
        return i

    # -- futures, made on first use ------------------------------------------------------

    @overload
    def __getitem__(self, index: int) -> Future: ...

    @overload
    def __getitem__(self, index: slice) -> list[Future]: ...

    def __getitem__(self, index: int | slice) -> Future | list[Future]:
        if isinstance(index, slice):
            return self._materialise(range(self._hold.n)[index])
        i = self._position(index)
        cache = self._futures
        if cache is not None:
            future = cache[i]
            if future is not None:
                return future
        return self._materialise(range(i, i + 1))[0]

    def __iter__(self) -> Iterator[Future]:
        n = self._hold.n
        for start in range(0, n, _RUN):
            yield from self._materialise(range(start, min(n, start + _RUN)))

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, Future) or self._futures is None:
            return False
        parsed = layer_key_index(value.key)
        if parsed is None or parsed[0] != self._hold.name or parsed[1] >= self._hold.n:
            return False
        return self._futures[parsed[1]] is value

    def futures(self) -> list[Future]:
        """Every future, as a list (made now if not made yet)."""
        return self._materialise(range(self._hold.n))

    def _materialise(self, indices: range) -> list[Future]:
        if self._released:
            raise RuntimeError(f"this FutureSequence of layer {self._hold.name!r} was released")
        client = self._client
        state = client._state
        hold = self._hold
        with state.lock, gc_paused() if len(indices) >= _RUN else contextlib.nullcontext():
            cache = self._futures
            if cache is None:
                if len(indices) == hold.n:  # all of them, in bulk
                    made = [Future(s.key, client, s) for s in state.layer_states(hold, range(hold.n), hold_refs=True)]
                    self._futures = cast("list[Future | None]", made)
                    return made.copy()
                cache = self._futures = [None] * hold.n
            missing = [i for i in indices if cache[i] is None]
            if missing:
                for i, key_state in zip(missing, state.layer_states(hold, missing, hold_refs=True)):
                    cache[i] = Future(key_state.key, client, key_state)
            return [cache[i] for i in indices]  # type: ignore[misc]

    def _states(self) -> list[KeyState]:
        """Every key's state, without making futures (for ``gather``; holds nothing more)."""
        if self._released:
            raise RuntimeError(f"this FutureSequence of layer {self._hold.name!r} was released")
        state = self._client._state
        with state.lock, gc_paused():
            return state.layer_states(self._hold, range(self._hold.n), hold_refs=False)

    # -- lists, pickling, release ----------------------------------------------------------

    def __add__(self, other: Any) -> list[Future]:
        if isinstance(other, (list, tuple, FutureSequence)):
            return self.futures() + list(other)
        return NotImplemented

    def __radd__(self, other: Any) -> list[Future]:
        if isinstance(other, (list, tuple)):
            return list(other) + self.futures()
        return NotImplemented

    def __reduce__(self) -> Any:
        # Inside a task's arguments it stands for the list of its results: pickled as
        # its futures, which the argument pickler turns into dependencies.
        return (list, (self.futures(),))

    def release(self) -> None:
        """Drop this sequence's hold on the layer's keys now (idempotent).  Futures taken
        from it keep their own keys until they go."""
        if not self._released:
            self._released = True
            self._futures = None
            self._client._release_layer(self._hold)

    def __del__(self) -> None:
        if not self._released:
            self._released = True
            with contextlib.suppress(Exception):  # interpreter shutdown, or a closed client
                self._client._release_layer(self._hold)

    def __repr__(self) -> str:
        hold = self._hold
        if self._released:
            return f"<FutureSequence: released, {hold.n:,} keys of layer {hold.name!r}>"
        counts = hold.counts()  # (without the lock: a repr must never wait, and a count may lag)
        done = ", ".join(f"{count:,} {status}" for status, count in counts.items() if count)
        made = sum(f is not None for f in self._futures) if self._futures is not None else 0
        return (
            f"<FutureSequence: {hold.n:,} futures of layer {hold.name!r}"
            f" ({done or 'none done'}; {made:,} futures made)>"
        )
