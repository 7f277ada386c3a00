"""``LayerFeed``: a high-level graph fed to the core a chunk per tick, with bounded work in every tick.

The feed's events go into a real ``SchedulerState`` (no workers: tasks wait),
and each tick's events are counted in keys, the unit of the core's work.
"""

from __future__ import annotations

import sched_core as sc

from dsched._scheduler_routes import LayerFeed

BUDGET = 100


def keys_in(events: list[sc.SchedulerEvent]) -> int:
    n = 0
    for event in events:
        if isinstance(event, sc.GraphSubmitted):
            n += len(event.tasks) + len(event.wanted)
        elif isinstance(event, (sc.ClientWantsKeys, sc.ClientReleasesKeys)):
            n += len(event.keys)
    return n


def feed_all(layers: list[sc.Layer], wanted: set[str], wanted_layers: set[str]) -> tuple[sc.SchedulerState, list[int]]:
    """Run a feed to its end; the core it fed, and the keys each tick handed it."""
    state = sc.SchedulerState()
    state.handle_events([sc.ClientAdded("client"), sc.ClientAdded("holder")])
    feed = LayerFeed("client", "holder", sc.LayerExpander(layers), set(wanted), None, wanted_layers)
    per_tick: list[int] = []
    while not feed.done:
        events = feed.next_events(BUDGET)
        per_tick.append(keys_in(events))
        for instruction in state.handle_events(events):
            assert not isinstance(instruction, sc.ClientError), instruction
        assert len(per_tick) < 10_000, "the feed never ends"
    return state, per_tick


def wanted_by(state: sc.SchedulerState, client: str) -> set[str]:
    return {ts.key for ts in state.clients[client].wants}


def test_a_map_nobody_reads_is_handed_to_the_client_chunk_by_chunk() -> None:
    n = 2_000
    state, per_tick = feed_all([sc.MapLayer("m", n, "f", [b""] * n)], set(), {"m"})
    assert "holder" not in state.clients
    assert wanted_by(state, "client") == {sc.layer_key("m", i) for i in range(n)}
    assert len(per_tick) == n // BUDGET
    assert max(per_tick) <= 4 * BUDGET


def test_a_read_layer_is_held_until_its_readers_are_in_then_let_go_a_chunk_at_a_time() -> None:
    n = 1_000
    layers: list[sc.Layer] = [
        sc.MapLayer("x", n, "f", [b""] * n),
        sc.MapLayer("y", n, "g", None, ["x"], [n]),
        sc.TreeReduceLayer("s", "y", n, "combine", "aggregate", None, 4),
    ]
    state, per_tick = feed_all(layers, {sc.layer_key("s", 0), sc.layer_key("y", 7)}, set())
    assert "holder" not in state.clients
    assert wanted_by(state, "client") == {sc.layer_key("s", 0), sc.layer_key("y", 7)}
    # Every task is still known: each waits for its dependencies, which are kept for it.
    assert all(sc.layer_key(name, i) in state.tasks for name in ("x", "y") for i in range(n))
    assert max(per_tick) <= 4 * BUDGET  # letting go of 2,000 held keys took ticks of their own
    assert sum(per_tick) < 6 * (n + n + n // 3 + n)


def test_wanted_keys_no_layer_defines_are_asked_for_at_the_end() -> None:
    state = sc.SchedulerState()
    state.handle_events([sc.ClientAdded("client"), sc.ClientAdded("holder")])
    feed = LayerFeed("client", "holder", sc.LayerExpander([sc.MapLayer("m", 3, "f", [b""] * 3)]), {"elsewhere"})
    events = feed.next_events(BUDGET)
    assert feed.done
    assert [e.keys for e in events if isinstance(e, sc.ClientWantsKeys)] == [["elsewhere"]]
    errors = [i for i in state.handle_events(events) if isinstance(i, sc.ClientError)]
    assert [e.kind for e in errors] == ["unknown-key"]
    assert "holder" not in state.clients


def test_a_cancelled_feed_removes_its_holder() -> None:
    state = sc.SchedulerState()
    state.handle_events([sc.ClientAdded("client"), sc.ClientAdded("holder")])
    layers: list[sc.Layer] = [sc.MapLayer("x", 500, "f", [b""] * 500), sc.MapLayer("y", 500, "g", None, ["x"], [500])]
    feed = LayerFeed("client", "holder", sc.LayerExpander(layers), set(), None, {"y"})
    state.handle_events(feed.next_events(BUDGET))
    assert len(state.clients["holder"].wants) == BUDGET
    feed.cancel()
    state.handle_events(feed.next_events(BUDGET))
    assert feed.done and "holder" not in state.clients
