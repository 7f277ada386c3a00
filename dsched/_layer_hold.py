"""``LayerHold``: a client's hold on every key of one Map layer, as one record.

A ``map`` sent as a layer is held by the client as a whole: the layer's name,
its size, how many :class:`~dsched._future_sequence.FutureSequence` objects
hold it, and what the scheduler said about keys no ``Future`` was made for
yet (one byte per key for "finished"; a :class:`~dsched._future.KeyState`
for anything rarer).  It stands for one reference on each key
``"('<name>', i)"``.  :class:`~dsched._client_state.ClientState` keeps these
records next to its key table and changes them under its lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from dsched._client_errors import FutureCancelledError
from dsched._future import CANCELLED, FINISHED, PENDING, KeyState

__all__ = ["LayerHold", "layer_key_index", "layer_keys_done"]


def layer_key_index(key: str) -> tuple[str, int] | None:
    """``("name", i)`` for a key ``"('name', i)"``, None for any other key (cheap checks first)."""
    if not key.startswith("('") or not key.endswith(")"):
        return None
    name, sep, digits = key[2:-1].rpartition("', ")
    if not sep or not digits.isdigit() or not digits.isascii() or (digits[0] == "0" and len(digits) > 1):
        return None
    return name, int(digits)


class LayerHold:
    """A client's hold on every key of one Map layer, and what it knows of keys without a state.

    ``refs`` counts the live sequences of the layer (a pure map made twice
    shares one).  ``done[i]`` is 1 once key ``i`` was reported in memory.
    ``states[i]`` is key ``i``'s state once one was needed (a future was made,
    or news other than "finished" came); those states are the layer's, not in
    the client's key table.  ``ended`` is what became of every key still
    pending when the whole layer stopped (cancelled, refused, client closed);
    with ``ended_finished`` it applies to finished keys too (a cancellation).
    ``attached``: in the client's table of held layers (not yet released,
    cancelled or refused).  Changed under the client state's lock.
    """

    __slots__ = (
        "attached", "done", "ended", "ended_finished", "ended_reason", "finished", "n", "name", "refs", "states",
    )

    def __init__(self, name: str, n: int) -> None:
        self.name = name
        self.n = n
        self.refs = 0
        self.done = bytearray(n)
        self.finished = 0
        self.states: list[KeyState | None] | None = None  # made on first use
        self.attached = True  # in the client's table of held layers
        self.ended: tuple[str, BaseException | None] | None = None
        self.ended_reason = ""
        self.ended_finished = False

    def key(self, i: int) -> str:
        return f"('{self.name}', {i})"

    def own_states(self) -> list[KeyState | None]:
        states = self.states
        if states is None:
            states = self.states = [None] * self.n
        return states

    def new_state(self, i: int, key: str) -> KeyState:
        """Key ``i``'s state as known so far (for a key that had none)."""
        ended = self.ended
        if self.done[i]:
            if ended is None or not self.ended_finished:
                return KeyState(key, FINISHED)
        elif ended is None:
            return KeyState(key)
        state = KeyState(key)
        self.end_state(state)
        return state

    def end_state(self, state: KeyState) -> None:
        """Give ``state`` the layer's end (see ``ended``)."""
        assert self.ended is not None
        status, failure = self.ended
        if status == CANCELLED:
            failure = FutureCancelledError(state.key, self.ended_reason)
        state.status = status
        state.failure = failure
        state.exception = None

    def counts(self) -> dict[str, int]:
        """How many keys are in each status other than pending."""
        out: dict[str, int] = {FINISHED: self.finished}
        done = self.done
        for i, state in enumerate(self.states or ()):
            if state is not None and state.status != PENDING and state.status != FINISHED:
                out[state.status] = out.get(state.status, 0) + 1
                out[FINISHED] -= done[i]  # finished once, then lost or cancelled
        return out

    def states_of(self, indices: Sequence[int], hold_refs: bool, table: dict[str, KeyState] | None) -> list[KeyState]:
        """The states of keys ``indices``, made now if needed (one more reference each with
        ``hold_refs``: a future made).

        A key with a state in ``table`` (the client's key table: a future of
        its own, made before the layer or left from an earlier one) shares it.
        """
        if self.states is None and self.ended is None and indices == range(self.n):
            # Every key at once, none made yet (a gather, or iterating all): in bulk, unless
            # some key has a state of its own already.
            name = self.name
            keys = [f"('{name}', {i})" for i in range(self.n)]
            if table is None or table.keys().isdisjoint(keys):
                if self.finished:
                    fresh = [KeyState(key, FINISHED) if done else KeyState(key) for key, done in zip(keys, self.done)]
                else:
                    fresh = list(map(KeyState, keys))
                if hold_refs:
                    for new in fresh:
                        new.refs = 1
                self.states = cast("list[KeyState | None]", fresh.copy())
                return fresh
        return self._states_one_by_one(indices, hold_refs, table)

    def _states_one_by_one(
        self, indices: Sequence[int], hold_refs: bool, table: dict[str, KeyState] | None
    ) -> list[KeyState]:
        own = self.own_states()
        name = self.name
        out: list[KeyState] = []
        append = out.append
        for i in indices:
            state = own[i]
            if state is None:
                key = f"('{name}', {i})"
                state = table.get(key) if table is not None else None
                if state is None:
                    state = self.new_state(i, key)
                own[i] = state
            if hold_refs:
                state.refs += 1
            append(state)
        return out

    def unheld_keys(self, table: dict[str, KeyState]) -> list[str]:
        """This layer is no longer held: the keys nothing else holds (to release).

        A key with a live future stays held, its state moved to ``table`` (the
        client's key table, where that future's release finds it); states of
        ``table`` no future holds any more go.
        """
        name = self.name
        own = self.states
        self.states = None
        if own is None and not table:
            return [f"('{name}', {i})" for i in range(self.n)]
        out: list[str] = []
        for i in range(self.n):
            key = f"('{name}', {i})"
            state = own[i] if own is not None else None
            if state is not None and state.refs > 0:
                table.setdefault(key, state)
                continue
            other = table.get(key)
            if other is not None:
                if other.refs > 0:
                    continue
                del table[key]
            out.append(key)
        return out


def layer_keys_done(layers: dict[str, LayerHold], keys: list[str]) -> list[KeyState]:
    """Keys of held ``layers`` are in memory: noted in their layers; the states of those that have one.

    The hot path of a big layer's results (about 0.4 us a key): a frame's keys
    mostly share a layer, so the last layer's key prefix is tried first, and
    the key parsed only when it differs.
    """
    hold: LayerHold | None = None
    prefix = ""
    start = 0
    with_state: list[KeyState] = []
    for key in keys:
        if hold is None or not key.startswith(prefix):
            parsed = layer_key_index(key)
            if parsed is None:
                continue
            found = layers.get(parsed[0])
            if found is None:
                continue
            hold = found
            prefix = f"('{hold.name}', "
            start = len(prefix)
        try:
            # (Only keys this client holds get news: one with the prefix of a held layer is its key.)
            i = int(key[start:-1])
        except ValueError:
            continue
        if not 0 <= i < hold.n:
            continue
        if not hold.done[i]:
            hold.done[i] = 1
            hold.finished += 1
        if hold.states is not None:
            state = hold.states[i]
            if state is not None:
                with_state.append(state)
    return with_state
