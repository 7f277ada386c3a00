"""A client's bookkeeping, without I/O: which keys it holds, their states, what to send next.

:class:`ClientState` is shared by the caller's thread (which submits, scatters
and drops futures) and the client's event loop thread (which applies the
scheduler's news and sends messages).  One lock guards the key table, the
reference counts and the outbox; it is taken once per call or per received
frame, never per key.  Watchers are told *after* the lock is released, on the
loop thread, so a done callback may submit more work.

Ordering is what keeps holds right: every message for the scheduler goes
through one outbox, appended under the lock, and releases are turned into a
``ReleaseKeys`` under the same lock when the loop drains the outbox.  So a key
released and then submitted again reaches the scheduler as "release, then
submit", and a key still held is never submitted twice.

A refused submission (``ClientError``) names keys, not the submission: recent
submissions are remembered (their keys and dependencies) until all their keys
are done or released, so the refusal can fail exactly the futures it stranded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final

import anyio

from dsched import _protocol as p
from dsched._client_errors import (
    ClientDisconnectedError,
    FutureCancelledError,
    FutureLostError,
    GraphError,
    failure_for,
)
from dsched._future import CANCELLED, ERROR, FINISHED, LOST, PENDING, KeyState, Watcher
from dsched._layer_hold import LayerHold, layer_key_index, layer_keys_done
from dsched._serialize import RemoteError

__all__ = ["ClientState", "CountWaiter", "Notifications", "run_notifications"]

logger = logging.getLogger("dsched.client")

MAX_RECORDS: Final = 10_000
# Holding at least this many keys at once checks first whether they are all new.
_BULK: Final = 1_000

# States whose watchers are to be told, with the watchers taken from them.
Notifications = list[tuple[KeyState, Watcher | list[Watcher]]]


def run_notifications(notifications: Notifications) -> None:
    """Tell watchers their keys are done (call without holding the lock)."""
    for state, watchers in notifications:
        if type(watchers) is list:
            for watcher in watchers:
                _tell(watcher, state)
        else:
            _tell(watchers, state)  # type: ignore[arg-type]


def _tell(watcher: Watcher, state: KeyState) -> None:
    try:
        watcher.key_done(state)
    except Exception:
        logger.exception("a watcher of %r failed", state.key)


class CountWaiter:
    """Waits for a number of keys to be done, or for the first error (one event per waiting call)."""

    __slots__ = ("errored", "event", "remaining", "stop_on_error")

    def __init__(self, remaining: int, stop_on_error: bool = False) -> None:
        self.remaining = remaining
        self.stop_on_error = stop_on_error
        self.errored = False
        self.event = anyio.Event()
        if remaining <= 0:
            self.event.set()

    def key_done(self, state: KeyState) -> None:
        self.remaining -= 1
        if state.status != FINISHED:
            self.errored = True
        if self.remaining <= 0 or (self.errored and self.stop_on_error):
            self.event.set()


class _Submission:
    """A recent submission: what a ``ClientError`` about it may name, and the states it created
    (or the layer it holds: a refusal names the layer's first key)."""

    __slots__ = ("checked", "dependencies", "hold", "keys", "states")

    def __init__(
        self, keys: list[str], dependencies: list[str], states: list[KeyState], hold: LayerHold | None = None
    ) -> None:
        self.keys = keys
        self.dependencies = dependencies
        self.states = states
        self.hold = hold
        self.checked = 0  # states before this index are done or released

    def settled(self) -> bool:
        hold = self.hold
        if hold is not None:
            return hold.refs <= 0 or not hold.attached or hold.finished >= hold.n
        states = self.states
        i = self.checked
        n = len(states)
        while i < n and (states[i].status != PENDING or states[i].refs <= 0):
            i += 1
        self.checked = i
        return i == n

    def names_any(self, keys: set[str]) -> bool:
        hold = self.hold
        if hold is not None:
            return any((parsed := layer_key_index(key)) is not None and parsed[0] == hold.name for key in keys)
        return not keys.isdisjoint(self.keys) or not keys.isdisjoint(self.dependencies)


class ClientState:
    """Held keys, their shared states and reference counts, and the outbox to the scheduler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: dict[str, KeyState] = {}
        self.closed: BaseException | None = None  # why no more work is accepted
        self._outbox: list[p.ClientToScheduler] = []
        self._releases: deque[KeyState] = deque()
        self._submissions: deque[_Submission] = deque()
        # Map layers held as a whole (``FutureSequence``), by name: one reference on each of their keys.
        self.layers: dict[str, LayerHold] = {}
        self._layer_releases: deque[LayerHold] = deque()

    def _check_open(self) -> None:
        if self.closed is not None:
            raise ClientDisconnectedError(f"the client is closed: {self.closed}")

    # -- the caller's side (any thread) ------------------------------------------------

    def submit(
        self, functions: list[bytes], tasks: list[p.GraphTask], wanted: list[str] | None = None
    ) -> list[KeyState]:
        """Hold keys and queue the submission; return the held states.

        ``wanted=None`` (``submit``/``map``): every task is wanted; tasks whose key
        is held already are not sent again, and the states align with ``tasks``.
        Otherwise (a task graph) every task is sent, ``wanted`` keys are held and
        the states align with ``wanted``.
        """
        with self.lock:
            self._check_open()
            states = self.states
            new_states: list[KeyState] = []
            held: list[KeyState] = []
            if wanted is None:
                send: list[p.GraphTask] = []
                for task in tasks:
                    state = states.get(task.key)
                    if state is None:
                        state = states[task.key] = KeyState(task.key)
                        send.append(task)
                        new_states.append(state)
                    state.refs += 1
                    held.append(state)
            else:
                send = tasks
                held = self._hold_keys(wanted, new_states)
            if send:
                new_keys = [s.key for s in new_states]
                self._outbox.append(p.SubmitGraph(functions, send, new_keys))
                deps = [d for t in send if t.dependencies for d in t.dependencies]
                self._remember(_Submission([t.key for t in send], deps, new_states))
        return held

    def submit_layers(self, message: p.SubmitLayers, wanted: list[str]) -> list[KeyState]:
        """Hold ``wanted`` (the keys ``message`` asks for) and queue the graph; return the held states."""
        with self.lock:
            self._check_open()
            new_states: list[KeyState] = []
            held = self._hold_keys(wanted, new_states)
            self._outbox.append(message)
            self._remember(_Submission(wanted, [], new_states))
        return held

    def submit_map_layer(self, message: p.SubmitLayers, name: str, n: int) -> LayerHold:
        """Hold every key of the layer ``name`` (its ``n`` partitions) as one reference; queue the graph.

        O(1): no key, state or table entry per partition (see ``layer_states``).
        The same layer held already (a pure map made again) is held once more.
        """
        with self.lock:
            self._check_open()
            hold = self.layers.get(name)
            if hold is None:
                hold = self.layers[name] = LayerHold(name, n)
            hold.refs += 1
            self._outbox.append(message)
            self._remember(_Submission([], [], [], hold))
        return hold

    def layer_states(self, hold: LayerHold, indices: Sequence[int], hold_refs: bool) -> list[KeyState]:
        """The states of keys ``indices`` of ``hold``, made now if needed (one more reference each
        with ``hold_refs``: a future made).  Under the lock.  See ``LayerHold.states_of``."""
        return hold.states_of(indices, hold_refs, self.states if hold.attached and self.states else None)

    def _hold_keys(self, keys: list[str], new_states: list[KeyState]) -> list[KeyState]:
        """One more reference on each key's state, made (and added to ``new_states``) if new.  Under the lock."""
        states = self.states
        if len(keys) >= _BULK and states.keys().isdisjoint(keys) and len(dict.fromkeys(keys)) == len(keys):
            # All new and distinct (a big map's or layer's keys): build the states in bulk.
            fresh = [KeyState(key) for key in keys]
            for new in fresh:
                new.refs = 1
            states.update(zip(keys, fresh))
            new_states.extend(fresh)
            return fresh
        held: list[KeyState] = []
        for key in keys:
            state = states.get(key)
            if state is None:
                state = states[key] = KeyState(key)
                new_states.append(state)
            state.refs += 1
            held.append(state)
        return held

    def scattered(self, nbytes: dict[str, int], workers: list[str]) -> list[KeyState]:
        """Hold keys whose values were just put on ``workers``; queue ``Scattered``."""
        with self.lock:
            self._check_open()
            states = self.states
            held: list[KeyState] = []
            for key in nbytes:
                state = states.get(key)
                if state is None:
                    state = states[key] = KeyState(key, FINISHED)
                state.refs += 1
                held.append(state)
            self._outbox.append(p.Scattered(workers, nbytes))
        return held

    def held_keys(self) -> list[str]:
        """Every key a future of this client holds (to ask a scheduler reached again for them)."""
        with self.lock:
            keys = [key for key, state in self.states.items() if state.refs > 0]
            for hold in self.layers.values():
                keys.extend(f"('{hold.name}', {i})" for i in range(hold.n))
            return list(dict.fromkeys(keys)) if self.layers else keys

    def hold(self, states: Iterable[KeyState]) -> None:
        """One more reference on each state (a new Future on a held key)."""
        with self.lock:
            for state in states:
                state.refs += 1

    def queue_release(self, state: KeyState) -> None:
        """A future of ``state`` is gone.  Safe from any thread, even inside ``__del__``."""
        self._releases.append(state)

    def queue_layer_release(self, hold: LayerHold) -> None:
        """A sequence holding ``hold`` is gone.  Safe from any thread, even inside ``__del__``."""
        self._layer_releases.append(hold)

    def _remember(self, submission: _Submission) -> None:
        records = self._submissions
        records.append(submission)
        while records and (len(records) > MAX_RECORDS or records[0].settled()):
            records.popleft()

    # -- the loop's side ---------------------------------------------------------------

    def drain(self) -> list[p.ClientToScheduler]:
        """The messages to send now, in order; releases become one ``ReleaseKeys`` at the end."""
        with self.lock:
            out = self._outbox
            self._outbox = []
            releases = self._releases
            states = self.states
            released: list[str] = []
            while releases:
                state = releases.popleft()
                state.refs -= 1
                if state.refs <= 0 and states.get(state.key) is state:
                    del states[state.key]
                    if self._layer_entry(state.key) is None:  # else the layer still holds it
                        released.append(state.key)
            layer_releases = self._layer_releases
            while layer_releases:
                hold = layer_releases.popleft()
                hold.refs -= 1
                if hold.refs <= 0 and self.layers.get(hold.name) is hold:
                    del self.layers[hold.name]
                    hold.attached = False
                    released.extend(hold.unheld_keys(self.states))
            if released:
                out.append(p.ReleaseKeys(released))
        return out

    def _layer_entry(self, key: str) -> tuple[LayerHold, int] | None:
        """The held layer ``key`` belongs to, and its index there (None for other keys)."""
        if not self.layers:
            return None
        parsed = layer_key_index(key)
        if parsed is None:
            return None
        hold = self.layers.get(parsed[0])
        if hold is None or parsed[1] >= hold.n:
            return None
        return hold, parsed[1]

    def _state_of(self, key: str) -> KeyState | None:
        """The state of a held key: in the table, or else made now for a key of a held layer."""
        state = self.states.get(key)
        if state is None and self.layers:
            entry = self._layer_entry(key)
            if entry is not None:
                hold, i = entry
                own = hold.own_states()
                state = own[i]
                if state is None:
                    state = own[i] = hold.new_state(i, key)
        return state

    def has_outgoing(self) -> bool:
        return bool(self._outbox or self._releases or self._layer_releases)

    def cancel(self, states: list[KeyState], force: bool, reason: str = "cancelled by the client") -> Notifications:
        """Queue ``CancelKeys`` and mark the states cancelled (they no longer stand for held keys)."""
        with self.lock:
            keys = list(dict.fromkeys(s.key for s in states))
            if self.closed is None and keys:
                self._outbox.append(p.CancelKeys(keys, force))
            out: Notifications = []
            for state in states:
                self._detach(state)
                if state.status == PENDING or state.status == FINISHED:
                    self._finish(state, CANCELLED, FutureCancelledError(state.key, reason), out)
        return out

    def watch(self, states: Iterable[KeyState], watcher: Watcher) -> list[KeyState]:
        """Register ``watcher`` on the pending states; return those already done (tell it yourself)."""
        done: list[KeyState] = []
        with self.lock:
            for state in states:
                watchers = state.watchers
                if state.status != PENDING:
                    done.append(state)
                elif watchers is None:
                    state.watchers = watcher
                elif type(watchers) is list:
                    watchers.append(watcher)
                else:
                    state.watchers = [watchers, watcher]  # type: ignore[list-item]
        return done

    def handle(self, messages: list[p.SchedulerToClient]) -> Notifications:
        """Apply a frame of scheduler news; return the watchers to tell (outside the lock)."""
        out: Notifications = []
        with self.lock:
            states = self.states
            for msg in messages:
                if type(msg) is p.KeysInMemory:
                    unknown: list[str] = []
                    for key in msg.keys:
                        state = states.get(key)
                        if state is None:
                            unknown.append(key)
                        elif state.status != FINISHED:
                            self._finished(state, out)
                    if unknown and self.layers:
                        for state in layer_keys_done(self.layers, unknown):
                            if state.status != FINISHED:
                                self._finished(state, out)
                else:
                    self._handle_other(msg, out)
        return out

    @staticmethod
    def _finished(state: KeyState, out: Notifications) -> None:
        state.status = FINISHED
        state.failure = state.exception = None
        if state.watchers is not None:
            out.append((state, state.watchers))
            state.watchers = None

    def _handle_other(self, msg: p.SchedulerToClient, out: Notifications) -> None:
        state_of = self._state_of
        if isinstance(msg, p.KeyErred):
            state = state_of(msg.key)
            if state is not None:
                try:
                    state.exception = p.payload_bytes(msg.exception)
                except p.ProtocolError as exc:
                    state.failure = RemoteError("ProtocolError", f"the task's exception did not decode: {exc}")
                state.traceback = msg.traceback
                self._finish(state, ERROR, None, out)
        elif isinstance(msg, p.KeyFailed):
            state = state_of(msg.key)
            if state is not None:
                self._finish(state, ERROR, failure_for(msg.key, msg.blamed_key, msg.kind, msg.message), out)
        elif isinstance(msg, p.KeyLost):
            state = state_of(msg.key)
            if state is not None:
                error = failure_for(msg.key, msg.key, "lost-data", f"the data of {msg.key!r} was lost")
                self._finish(state, LOST, error, out)
        elif isinstance(msg, p.KeysCancelled):
            for key in msg.keys:
                state = state_of(key)
                if state is not None:
                    self._detach(state)
                    self._finish(state, CANCELLED, FutureCancelledError(key, "cancelled"), out)
        elif isinstance(msg, p.ClientError):
            self._refused(msg, out)
        else:
            logger.warning("unexpected message from the scheduler: %r", msg)

    def _refused(self, msg: p.ClientError, out: Notifications) -> None:
        if msg.kind == "unknown-key":
            # Held keys the scheduler does not have (asked for again after a reconnection):
            # each future says so, rather than waiting for news that will never come.
            for key in msg.keys:
                state = self._state_of(key)
                if state is not None and state.status in (PENDING, FINISHED):
                    self._finish(state, LOST, FutureLostError(key), out)
            return
        named = set(msg.keys)
        for submission in reversed(self._submissions):
            if submission.names_any(named):
                error = GraphError(msg.kind, msg.message, list(msg.keys))
                if submission.hold is not None:  # the scheduler holds nothing of the layer
                    self._end_layer(submission.hold, ERROR, error, out)
                for state in submission.states:
                    if state.status == PENDING:
                        self._detach(state)  # the scheduler holds nothing for it
                        self._finish(state, ERROR, error, out)
                self._submissions.remove(submission)
                return
        logger.warning("the scheduler refused a request: %s: %s", msg.kind, msg.message)

    def cancel_layer(self, hold: LayerHold, force: bool, reason: str = "cancelled by the client") -> Notifications:
        """``cancel`` for every key of a layer held as a whole (futures made later are cancelled too)."""
        with self.lock:
            out: Notifications = []
            if not hold.attached:  # released, refused or cancelled already: the scheduler holds nothing
                return out
            if self.closed is None:
                self._outbox.append(p.CancelKeys([hold.key(i) for i in range(hold.n)], force))
            self._end_layer(hold, CANCELLED, None, out, reason=reason, finished_too=True)
        return out

    def _end_layer(
        self,
        hold: LayerHold,
        status: str,
        failure: BaseException | None,
        out: Notifications,
        *,
        reason: str = "",
        finished_too: bool = False,
        detach: bool = True,
    ) -> None:
        """Every pending key of ``hold`` (finished ones too with ``finished_too``) ends as ``status``,
        now and when its future is made later; ``detach``: the layer no longer stands for held keys."""
        hold.ended = (status, failure)
        hold.ended_reason = reason
        hold.ended_finished = finished_too
        for state in hold.states or ():
            if state is not None and (state.status == PENDING or (finished_too and state.status == FINISHED)):
                if detach:
                    self._detach(state)
                hold.end_state(state)
                if state.watchers is not None:
                    out.append((state, state.watchers))
                    state.watchers = None
        if detach and self.layers.get(hold.name) is hold:
            del self.layers[hold.name]
            hold.attached = False

    def _detach(self, state: KeyState) -> None:
        if self.states.get(state.key) is state:
            del self.states[state.key]

    @staticmethod
    def _finish(state: KeyState, status: str, failure: BaseException | None, out: Notifications) -> None:
        state.status = status
        if failure is not None:
            state.failure = failure
            state.exception = None
        if state.watchers is not None:
            out.append((state, state.watchers))
            state.watchers = None

    def fail_all(self, reason: BaseException, *, cancelled: bool) -> Notifications:
        """The client closed (``cancelled``) or lost the scheduler: every pending key fails."""
        out: Notifications = []
        with self.lock:
            if self.closed is None:
                self.closed = reason
            for state in self.states.values():
                if state.status == PENDING:
                    if cancelled:
                        self._finish(state, CANCELLED, FutureCancelledError(state.key, str(reason)), out)
                    else:
                        self._finish(state, ERROR, reason, out)
            for submission in self._submissions:  # stranded states no longer in the table
                for state in submission.states:
                    if state.status == PENDING:
                        self._finish(state, ERROR, reason, out)
            for hold in self.layers.values():
                if cancelled:
                    self._end_layer(hold, CANCELLED, None, out, reason=str(reason), detach=False)
                else:
                    self._end_layer(hold, ERROR, reason, out, detach=False)
            self._outbox.clear()
        return out
