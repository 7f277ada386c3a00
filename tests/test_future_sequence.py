"""``FutureSequence`` and the client's ``LayerHold`` bookkeeping, without a network.

A stub stands in for the client: these tests drive ``ClientState`` with the
scheduler's messages by hand and read what it would send.
"""

from __future__ import annotations

import gc
import pickle
import threading

import anyio
import pytest
from _client_helpers import inc
from test_reconnect import scheduler_with_worker

from dsched import _protocol as p
from dsched._client import Client
from dsched._client_errors import ClientDisconnectedError, FutureCancelledError, FutureLostError, GraphError
from dsched._client_state import ClientState, run_notifications
from dsched._future import Future, KeyState
from dsched._future_sequence import FutureSequence
from dsched._layer_hold import LayerHold, layer_key_index
from dsched._serialize import dumps_args, dumps_exception, loads_args


class StubClient:
    """What a ``FutureSequence`` and its futures need of a client."""

    def __init__(self) -> None:
        self._state = ClientState()

    def _release_layer(self, hold: LayerHold) -> None:
        self._state.queue_layer_release(hold)

    def _release_state(self, state: KeyState) -> None:
        self._state.queue_release(state)


class Recorder:
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []

    def key_done(self, state: KeyState) -> None:
        self.done.append((state.key, state.status))


def layer_message(name: str, n: int) -> p.SubmitLayers:
    spec = p.MapLayerSpec(name, n, 0, [pickle.dumps((i,)) for i in range(n)])
    return p.SubmitLayers([b"f"], [spec], [], [(0, 0)], [], [name])


def mapped(client: StubClient, name: str = "inc-abc", n: int = 10) -> FutureSequence:
    hold = client._state.submit_map_layer(layer_message(name, n), name, n)
    return FutureSequence(client, hold)  # type: ignore[arg-type]


def key(name: str, i: int) -> str:
    return f"('{name}', {i})"


def released_keys(messages: list[p.ClientToScheduler]) -> list[str]:
    return [k for m in messages if isinstance(m, p.ReleaseKeys) for k in m.keys]


def test_submitting_holds_one_record_not_one_per_key() -> None:
    client = StubClient()
    seq = mapped(client, n=100_000)
    state = client._state
    assert state.states == {} and list(state.layers) == ["inc-abc"] and state.layers["inc-abc"].refs == 1
    assert state.layers["inc-abc"].states is None  # no per-key list either until a future is made
    (sent,) = state.drain()
    assert isinstance(sent, p.SubmitLayers) and sent.wanted == [] and sent.wanted_layers == ["inc-abc"]
    assert len(seq) == 100_000 and seq.name == "inc-abc"
    assert seq.key(0) == "('inc-abc', 0)" and seq.key(-1) == "('inc-abc', 99999)"
    assert state.states == {}


def test_indexing_slicing_and_lists() -> None:
    client = StubClient()
    seq = mapped(client, n=10)
    assert seq[3] is seq[3] and seq[-1] is seq[9] and seq[3].key == key("inc-abc", 3)
    assert isinstance(seq[3], Future) and not isinstance(seq, list)
    assert [f.key for f in seq[2:5]] == [key("inc-abc", i) for i in (2, 3, 4)]
    assert seq[::-3] == [seq[9], seq[6], seq[3], seq[0]] and seq[20:] == [] and seq[:] == list(seq)
    for bad in (10, -11, 2**70):
        with pytest.raises(IndexError):
            seq[bad]
    with pytest.raises(TypeError):
        seq["1"]  # type: ignore[call-overload]
    with pytest.raises(IndexError):
        seq.key(10)
    assert seq.keys() == [key("inc-abc", i) for i in range(10)]
    other = mapped(client, name="other", n=2)
    assert seq + [other[0]] == [*seq, other[0]] and [other[0]] + seq == [other[0], *seq]
    assert seq + other == [*seq, *other] and (seq[0],) + seq == [seq[0], *seq]
    not_a_future: object = "x"
    assert seq[4] in seq and other[0] not in seq and not_a_future not in seq
    assert seq.index(seq[5]) == 5 and list(reversed(seq))[0] is seq[9]
    with pytest.raises(TypeError):
        seq[0] = seq[1]  # type: ignore[index]
    assert "10 futures of layer 'inc-abc'" in repr(seq) and "none done" in repr(seq)
    run_notifications(client._state.handle([p.KeysInMemory([key("inc-abc", 1), key("inc-abc", 2)])]))
    assert "2 finished" in repr(seq)
    # Each state is held once per future made, whatever the number of lookups.
    assert all(f._state.refs == 1 for f in seq)


def test_statuses_of_futures_made_before_and_after_the_news() -> None:
    client = StubClient()
    name = "work-1"
    seq = mapped(client, name=name, n=12)
    state = client._state
    before = {i: seq[i] for i in (0, 2, 4, 6, 8, 10)}
    recorder = Recorder()
    assert state.watch([f._state for f in before.values()], recorder) == []
    exception, text = dumps_exception(KeyError("missing"))
    notes = state.handle(
        [
            p.KeysInMemory([key(name, 0), key(name, 1), key(name, 4), key(name, 5)]),
            p.KeyErred(key(name, 2), key(name, 2), exception, text),
            p.KeyErred(key(name, 3), key(name, 3), exception, text),
            p.KeyLost(key(name, 4)),
            p.KeyLost(key(name, 5)),
            p.KeyFailed(key(name, 6), "other", "killed-worker", "worker died 3 times"),
            p.KeyFailed(key(name, 7), "other", "killed-worker", "worker died 3 times"),
            p.KeysCancelled([key(name, 8), key(name, 9)]),
        ]
    )
    run_notifications(notes)
    assert sorted(recorder.done) == sorted(
        [(key(name, 0), "finished"), (key(name, 2), "error"), (key(name, 4), "lost"), (key(name, 6), "error"),
         (key(name, 8), "cancelled")]
    )
    statuses = [seq[i].status for i in range(12)]  # the odd ones made only now
    assert statuses == ["finished"] * 2 + ["error"] * 2 + ["lost"] * 2 + ["error"] * 2 + ["cancelled"] * 2 + ["pending"] * 2
    for i in (2, 3):
        error = seq[i]._state.error()
        assert isinstance(error, KeyError) and "Remote traceback" in "".join(error.__notes__)
        assert seq[i].traceback() == text
    for i in (6, 7):
        assert "worker died" in str(seq[i]._state.error())
    for i in (8, 9):
        assert isinstance(seq[i]._state.error(), FutureCancelledError)
    assert state.states == {}  # the layer's states stay with the layer
    # A key finishing after its future was made; and news about keys of no held layer are ignored.
    run_notifications(state.handle([p.KeysInMemory([key(name, 10), key(name, 11), key(name, 12), key("nope", 1)])]))
    assert seq[10].status == "finished" and seq[11].status == "finished"


def test_dropping_the_sequence_releases_keys_no_future_holds() -> None:
    client = StubClient()
    state = client._state
    seq = mapped(client, name="drop", n=5)
    kept = seq[1]
    state.drain()
    del seq
    gc.collect()
    messages = state.drain()
    assert released_keys(messages) == [key("drop", i) for i in (0, 2, 3, 4)]
    assert state.layers == {} and list(state.states) == [key("drop", 1)]  # now held by the future alone
    del kept
    gc.collect()
    assert released_keys(state.drain()) == [key("drop", 1)] and state.states == {}
    # release() is explicit and idempotent; futures made before stay usable and held.
    seq = mapped(client, name="explicit", n=3)
    first = seq[0]
    seq.release()
    seq.release()
    assert released_keys(state.drain()) == [key("explicit", 1), key("explicit", 2)]
    with pytest.raises(RuntimeError, match="released"):
        seq[1]
    assert len(seq) == 3 and "released" in repr(seq) and first.status == "pending"
    first.release()
    assert released_keys(state.drain()) == [key("explicit", 0)]


def test_a_future_released_while_the_layer_holds_its_key_sends_nothing() -> None:
    client = StubClient()
    state = client._state
    seq = mapped(client, name="layer-holds", n=3)
    seq[0].release()
    seq[1]
    state.drain()
    assert released_keys(state.drain()) == []
    del seq
    gc.collect()
    assert released_keys(state.drain()) == [key("layer-holds", i) for i in range(3)]


def test_a_future_outliving_its_layer_is_shared_by_the_layer_made_again() -> None:
    client = StubClient()
    state = client._state
    first = mapped(client, name="again", n=3)
    kept = first[1]
    run_notifications(state.handle([p.KeysInMemory([key("again", 1)])]))
    del first
    gc.collect()
    assert released_keys(state.drain()) == [key("again", 0), key("again", 2)]
    second = mapped(client, name="again", n=3)
    states = second._states()  # (in bulk but for the key held already)
    assert states[1] is kept._state and states[1].status == "finished" and second[1]._state is kept._state
    assert kept._state.refs == 2 and states[0].status == "pending"
    del kept
    gc.collect()
    assert released_keys(state.drain()) == []  # the layer holds it again
    second.release()
    assert released_keys(state.drain()) == [key("again", i) for i in range(3)]


def test_the_same_layer_held_twice() -> None:
    client = StubClient()
    state = client._state
    first = mapped(client, name="pure", n=4)
    second = mapped(client, name="pure", n=4)
    assert first._hold is second._hold and first._hold.refs == 2
    assert [type(m) for m in state.drain()] == [p.SubmitLayers, p.SubmitLayers]
    assert first[0]._state is second[0]._state and first[0] is not second[0] and first[0]._state.refs == 2
    run_notifications(state.handle([p.KeysInMemory([key("pure", 2)])]))
    assert first[2].status == second[2].status == "finished"
    del first
    gc.collect()
    assert released_keys(state.drain()) == []  # the second still holds every key
    assert second[3].status == "pending"
    # Dropped and made again in the same tick: "release, then submit" must not lose the hold.
    third_hold = state.submit_map_layer(layer_message("pure", 4), "pure", 4)
    del second
    gc.collect()
    messages = state.drain()
    assert [type(m) for m in messages] == [p.SubmitLayers] and third_hold.refs == 1
    third = FutureSequence(client, third_hold)  # type: ignore[arg-type]
    assert third[2].status == "finished"
    third.release()
    assert released_keys(state.drain()) == [key("pure", i) for i in range(4)]


def test_a_refused_layer_fails_its_futures_made_before_and_after() -> None:
    client = StubClient()
    state = client._state
    unrelated = mapped(client, name="fine", n=2)
    seq = mapped(client, name="too-big", n=5)
    before = seq[1]
    recorder = Recorder()
    state.watch([before._state], recorder)
    state.drain()
    run_notifications(state.handle([p.ClientError("limit-exceeded", "over max_layer_tasks", [key("too-big", 0)])]))
    assert recorder.done == [(key("too-big", 1), "error")]
    for future in (before, seq[0], seq[4]):
        error = future._state.error()
        assert future.status == "error" and isinstance(error, GraphError) and error.kind == "limit-exceeded"
    assert unrelated[0].status == "pending" and "too-big" not in state.layers
    seq.release()
    assert released_keys(state.drain()) == []  # the scheduler holds nothing of it
    assert key("too-big", 0) not in state.held_keys()


def test_cancelling_a_layer() -> None:
    client = StubClient()
    state = client._state
    seq = mapped(client, name="cancel-me", n=4)
    before = seq[0]
    run_notifications(state.handle([p.KeysInMemory([key("cancel-me", 0), key("cancel-me", 1)])]))
    state.drain()
    run_notifications(state.cancel_layer(seq._hold, force=False))
    (sent,) = state.drain()
    assert sent == p.CancelKeys([key("cancel-me", i) for i in range(4)], False)
    assert [f.status for f in seq] == ["cancelled"] * 4 and before.status == "cancelled"
    assert isinstance(seq[3]._state.error(), FutureCancelledError)
    # The scheduler's confirmation is news about keys no longer held: ignored; nothing left to release.
    state.handle([p.KeysCancelled(seq.keys())])
    assert state.cancel_layer(seq._hold, force=False) == [] and state.drain() == []
    del seq, before
    gc.collect()
    assert state.drain() == [] and state.layers == {} and state.states == {}


def test_a_closed_client_or_lost_scheduler_fails_pending_keys() -> None:
    for cancelled, status in ((True, "cancelled"), (False, "error")):
        client = StubClient()
        state = client._state
        seq = mapped(client, name="closing", n=4)
        before = seq[0]
        run_notifications(state.handle([p.KeysInMemory([key("closing", 1)])]))
        run_notifications(state.fail_all(ClientDisconnectedError("gone"), cancelled=cancelled))
        assert before.status == status and seq[2].status == status and seq[1].status == "finished"
        error = seq[3]._state.error()
        assert isinstance(error, FutureCancelledError if cancelled else ClientDisconnectedError)
        with pytest.raises(ClientDisconnectedError):
            mapped(client, name="more", n=1)


def test_reconnection_asks_for_a_layers_keys_and_unknown_ones_are_lost() -> None:
    client = StubClient()
    state = client._state
    seq = mapped(client, name="again", n=3)
    other = state.submit([b"f"], [p.GraphTask("plain", [], 0, b"args")])
    before = seq[0]
    run_notifications(state.handle([p.KeysInMemory([key("again", 1)])]))
    assert sorted(state.held_keys()) == sorted(["plain", *seq.keys()])
    run_notifications(state.handle([p.ClientError("unknown-key", "lost", [key("again", 0), key("again", 1)])]))
    assert before.status == "lost" and seq[1].status == "lost" and seq[2].status == "pending"
    assert isinstance(seq[1]._state.error(), FutureLostError) and other[0].status == "pending"


def test_concurrent_materialisation_makes_each_future_once() -> None:
    client = StubClient()
    seq = mapped(client, name="threads", n=20_000)
    results: list[list[Future]] = []
    barrier = threading.Barrier(4)

    def use(step: int) -> None:
        barrier.wait()
        got = list(seq) if step == 0 else [seq[i] for i in range(0, 20_000, step)] + seq[::-step]
        results.append(got)

    threads = [threading.Thread(target=use, args=(step,)) for step in (0, 1, 3, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4
    everything = {id(f) for got in results for f in got}
    assert len(everything) == 20_000  # one future per index, whoever made it
    assert all(f._state.refs == 1 for f in seq)


def test_as_an_argument_it_pickles_as_its_futures() -> None:
    client = StubClient()
    seq = mapped(client, name="arg", n=3)
    payload, deps = dumps_args((seq, [1]), {"more": seq[1:]})
    assert deps == seq.keys()
    values = {k: 10 * i for i, k in enumerate(seq.keys())}
    assert loads_args(payload, values) == (([0, 10, 20], [1]), {"more": [10, 20]})  # a list of the results
    with pytest.raises(TypeError, match="inside a task"):
        pickle.dumps(seq)


def test_layer_key_index() -> None:
    assert layer_key_index("('inc-abc', 12)") == ("inc-abc", 12)
    assert layer_key_index("('a', b', 3)") == ("a', b", 3)
    for other in ("inc-abc", "('x', -1)", "('x', 01)", "('x', +1)", "('x', 1", "('x',1)", "('x', ١)", "('x', )"):
        assert layer_key_index(other) is None, other


def test_gather_states_of_a_made_sequence_share_the_futures_states() -> None:
    client = StubClient()
    seq = mapped(client, name="shared", n=3)
    made = seq[1]
    states = seq._states()
    assert states[1] is made._state and [s.key for s in states] == seq.keys()
    assert states[0].refs == 0 and made._state.refs == 1  # gathering holds nothing more


# -- against a scheduler that goes away ------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_reconnected_client_asks_again_for_a_layers_keys() -> None:
    async with scheduler_with_worker() as server:
        client = await Client(server.address, asynchronous=True, reconnect_timeout=30)
        keeper = await Client(server.address, asynchronous=True)
        shared = client.map(inc, range(20), as_layer=True)
        also_held = keeper.map(inc, range(20), as_layer=True)  # the same layer, held by another client too
        own = client.map(inc, range(100, 120), as_layer=True)
        assert isinstance(shared, FutureSequence) and isinstance(own, FutureSequence)
        assert await client.gather(shared) == await keeper.gather(also_held) == list(range(1, 21))
        assert await client.gather(own) == list(range(101, 121))
        lost_before = own[0]
        await server.clients[client.id].comm.aclose("a network hiccup")  # the scheduler drops the client
        with anyio.fail_after(20):
            while lost_before.status != "lost":
                await anyio.sleep(0.02)
        # The layer's keys were asked for again: what the scheduler still has stays, the rest is lost.
        assert own[19].status == "lost" and isinstance(await own[19].exception(), FutureLostError)
        assert shared[19].status == "finished" and await shared[19] == 20
        assert await client.gather(shared) == list(range(1, 21))
        await keeper.close()
        await client.close()
        assert shared[0].status == "finished"  # closing cancels pending keys only
