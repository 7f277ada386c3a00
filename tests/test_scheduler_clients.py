"""Unit tests of the scheduler core: what clients ask for and what they are told.

Releasing keys, wanting keys, cancelling, scattering, clients coming and going,
and the notifications sent to clients.  Every test drives a ``SchedulerState``
through the simulated cluster of ``_driver.py``.
"""

from __future__ import annotations

from _driver import computed_keys, computes, freed, of_type, spec
from _helpers import cluster

from sched_core import (
    CancelKeys,
    ClientError,
    ClientKeyErred,
    ClientKeysCancelled,
    ClientKeysInMemory,
    ClientReleasesKeys,
    ClientWantsKeys,
    FreeKeys,
    KeysScattered,
    TaskFinished,
)


# ----------------------------------------------------------------------
# Releasing keys


def test_release_forgets_everything() -> None:
    c = cluster(("a", 2), ("b", 2))
    c.submit("c1", {"x-1": [], "x-2": [], "y": ["x-1", "x-2"]}, ["y", "x-1"])
    c.run()
    holder = c.state.tasks["x-1"].who_has[0].address
    other = "b" if holder == "a" else "a"
    c.replicate("x-1", other)
    out = c.release("c1", ["y", "x-1"])
    frees = {i.worker: sorted(i.keys) for i in of_type(out, FreeKeys)}
    assert sorted(k for keys in frees.values() for k in keys) == ["x-1", "x-1", "y"]
    assert "x-1" in frees[holder] and "x-1" in frees[other]
    c.assert_empty()
    assert c.state.prefixes  # prefixes keep duration estimates


def test_release_while_processing_cancels_on_the_worker() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    out = c.release("c1", ["y"])
    assert freed(out, "a") == ["x"]
    c.assert_empty()
    # The worker finished anyway before it saw the FreeKeys: that result is freed too.
    c.workers["a"].data["x"] = 100
    out = c.handle(TaskFinished("a", "x", 100, 0.1))
    assert freed(out, "a") == ["x"]
    c.assert_empty()


def test_release_of_unknown_key_or_client_changes_nothing() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    before = c.snapshot()
    assert c.release("c1", ["nope"]) == []
    assert c.release("nobody", ["x"]) == []
    assert c.release("c1", []) == []
    assert c.snapshot() == before


def test_release_by_one_client_keeps_another_clients_key() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.submit("c2", {"x": []})
    c.finish("x")
    out = c.release("c1", ["x"])
    assert out == []
    assert c.state_of("x") == "memory"
    out = c.release("c2", ["x"])
    assert freed(out) == ["x"]
    c.assert_empty()


# ----------------------------------------------------------------------
# What a client asks for


def test_wants_unknown_key() -> None:
    c = cluster(("a", 1))
    before = c.snapshot()
    out = c.handle(ClientWantsKeys("c1", ["nope", "nada"]))
    [error] = of_type(out, ClientError)
    assert error.kind == "unknown-key"
    assert error.keys == ["nope", "nada"]
    assert c.snapshot() == before


def test_wants_key_in_memory_is_told_at_once() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.finish("x")
    out = c.handle(ClientWantsKeys("c2", ["x"]))
    assert [i.keys for i in of_type(out, ClientKeysInMemory) if i.client == "c2"] == [["x"]]
    assert computes(out) == []
    c.release("c1", ["x"])
    assert c.state_of("x") == "memory"
    c.release("c2", ["x"])
    c.assert_empty()


def test_wanting_a_key_in_memory_does_not_renotify_other_holders() -> None:
    # c1 was told x is in memory when it finished; c2 taking a hold on x is
    # news for c2 only.
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    out = c.finish("x")
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c1", ["x"])]
    out = c.handle(ClientWantsKeys("c2", ["x"]))
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c2", ["x"])]


def test_wants_erred_key_is_told_at_once() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    c.err("x")
    out = c.handle(ClientWantsKeys("c2", ["y"]))
    [note] = of_type(out, ClientKeyErred)
    assert (note.client, note.key, note.blamed_key, note.exception, note.traceback) == (
        "c2",
        "y",
        "x",
        "boom-x",
        "tb-x",
    )


def test_wants_a_released_dependency_recomputes_it() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    c.run()
    assert c.state_of("x") == "released"
    out = c.handle(ClientWantsKeys("c2", ["x"]))
    assert computed_keys(out) == ["x"]
    c.run()
    assert c.clients["c2"].status == {"x": "memory"}


def test_wants_processing_key_is_told_when_done() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    out = c.handle(ClientWantsKeys("c2", ["x"]))
    assert out == []
    out = c.finish("x")
    assert sorted(i.client for i in of_type(out, ClientKeysInMemory)) == ["c1", "c2"]


def test_wanting_twice_is_one_hold() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.handle(ClientWantsKeys("c1", ["x"]))
    c.finish("x")
    c.release("c1", ["x"])
    c.assert_empty()


# ----------------------------------------------------------------------
# Cancelling


def test_cancel_releases_and_tells_the_client() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    out = c.handle(CancelKeys("c1", ["y"]))
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysCancelled)] == [("c1", ["y"])]
    assert freed(out, "a") == ["x"]
    c.assert_empty()


def test_cancel_keeps_another_clients_hold() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.submit("c2", {"x": []})
    out = c.handle(CancelKeys("c1", ["x"]))
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysCancelled)] == [("c1", ["x"])]
    assert freed(out) == []
    assert c.state_of("x") == "processing"
    out = c.finish("x")
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c2", ["x"])]


def test_forced_cancel_drops_every_hold() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.submit("c2", {"x": []})
    out = c.handle(CancelKeys("c1", ["x"], force=True))
    cancelled = sorted((i.client, i.keys) for i in of_type(out, ClientKeysCancelled))
    assert cancelled == [("c1", ["x"]), ("c2", ["x"])]
    assert freed(out) == ["x"]
    c.assert_empty()


def test_cancel_of_unknown_key_is_acknowledged_without_change() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    before = c.snapshot()
    out = c.handle(CancelKeys("c1", ["nope"]))
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysCancelled)] == [("c1", ["nope"])]
    assert c.snapshot() == before


def test_cancel_in_memory_key_frees_it() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.finish("x")
    out = c.handle(CancelKeys("c1", ["x"]))
    assert freed(out) == ["x"]
    c.assert_empty()


# ----------------------------------------------------------------------
# Scattering


def test_scattered_data_is_in_memory_and_usable() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.workers["a"].data["d"] = 500  # the client put it there
    out = c.handle(KeysScattered("c1", ["a"], {"d": 500}))
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c1", ["d"])]
    assert c.state_of("d") == "memory"
    out = c.submit("c1", [spec("y", ["d"])], ["y"])
    [instr] = computes(out)
    assert (instr.worker, instr.who_has, instr.nbytes) == ("a", {"d": ["a"]}, {"d": 500})
    c.run()
    c.release("c1", ["y"])
    assert c.state_of("d") == "memory"  # still held by the client
    out = c.release("c1", ["d"])
    assert freed(out) == ["d"]
    c.assert_empty()


def test_scattered_to_several_workers() -> None:
    c = cluster(("a", 1), ("b", 1))
    for w in "ab":
        c.workers[w].data["d"] = 8
    c.handle(KeysScattered("c1", ["a", "b"], {"d": 8}))
    assert sorted(ws.address for ws in c.state.tasks["d"].who_has) == ["a", "b"]
    assert c.state.workers["a"].nbytes == c.state.workers["b"].nbytes == 8
    out = c.release("c1", ["d"])
    assert sorted(i.worker for i in of_type(out, FreeKeys)) == ["a", "b"]
    c.assert_empty()


def test_release_and_scatter_again_in_one_batch_keeps_the_new_data() -> None:
    # c1 drops its hold on d (the scheduler frees d on a) and, in the same
    # batch, c2 scatters the same key to a again.  The FreeKeys meant for the
    # old copy must not reach a after the new copy: a would drop the data the
    # scheduler now believes it holds.
    c = cluster(("a", 1))
    c.workers["a"].data["d"] = 10
    c.handle(KeysScattered("c1", ["a"], {"d": 10}))
    c.workers["a"].data["d"] = 10  # c2 puts its copy there, then tells the scheduler
    c.check = False
    out = c.handle(ClientReleasesKeys("c1", ["d"]), KeysScattered("c2", ["a"], {"d": 10}))
    assert c.state_of("d") == "memory"
    assert [ws.address for ws in c.state.tasks["d"].who_has] == ["a"]
    assert "d" not in freed(out, "a"), out


def test_release_and_scatter_again_after_a_compute_in_one_batch() -> None:
    # As above, but a ComputeTask to a in between already pushed the FreeKeys
    # of d into the batch's instructions: it must still not reach a after
    # the new copy of d (the whole batch is sent after the scatter).
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    c.workers["a"].data["d"] = 10
    c.handle(KeysScattered("c1", ["a"], {"d": 10}))
    events = [ClientReleasesKeys("c1", ["d"]), *c.finished_event("x")]  # y goes to a
    c.workers["a"].data["d"] = 10
    events.append(KeysScattered("c2", ["a"], {"d": 10}))
    c.check = False
    out = c.handle_list(events)
    assert computed_keys(out) == ["y"]
    assert [ws.address for ws in c.state.tasks["d"].who_has] == ["a"]
    assert "d" not in freed(out, "a"), out


def test_scattering_a_key_twice_in_one_batch_notifies_it_once() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.workers["a"].data["d"] = 1
    c.workers["b"].data["d"] = 1
    out = c.handle(KeysScattered("c1", ["a"], {"d": 1}), KeysScattered("c1", ["b"], {"d": 1}))
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c1", ["d"])]
    assert sorted(ws.address for ws in c.state.tasks["d"].who_has) == ["a", "b"]


# ----------------------------------------------------------------------
# Clients coming and going


def test_client_added() -> None:
    c = cluster(("a", 1))
    assert c.add_client("c1") == []
    assert "c1" in c.state.clients and c.state.clients["c1"].wants == {}
    assert c.add_client("c1") == []
    c.submit("c1", {"x": []})
    assert c.add_client("c1") == []  # again: keeps what it holds
    assert [ts.key for ts in c.state.clients["c1"].wants] == ["x"]


def test_client_removed_releases_its_keys() -> None:
    c = cluster(("a", 2))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    c.submit("c2", {"z": []})
    c.run()
    out = c.remove_client("c1")
    assert freed(out) == ["y"]
    assert sorted(c.state.tasks) == ["z"]
    assert "c1" not in c.state.clients
    # A stale release from the gone client changes nothing.
    assert c.release("c1", ["z"]) == []
    c.remove_client("c2")
    c.assert_empty()


def test_client_removed_while_its_tasks_run() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {f"x-{i}": [] for i in range(10)})
    out = c.remove_client("c1")
    assert sorted(freed(out)) == ["x-0", "x-1"]
    c.assert_empty()


# ----------------------------------------------------------------------
# Notifications


def test_client_notifications_are_batched_per_client() -> None:
    c = cluster(("a", 4))
    c.submit("c1", {"x-1": [], "x-2": [], "x-3": []})
    c.submit("c2", {"x-2": [], "x-3": []})
    events = [ev for k in ["x-1", "x-2", "x-3"] for ev in c.finished_event(k)]
    out = c.handle_list(events)
    notes = of_type(out, ClientKeysInMemory)
    assert sorted((n.client, sorted(n.keys)) for n in notes) == [
        ("c1", ["x-1", "x-2", "x-3"]),
        ("c2", ["x-2", "x-3"]),
    ]


def test_notifications_keep_their_order_per_client() -> None:
    # An in-memory notice queued before an error is sent before it.
    c = cluster(("a", 2))
    c.submit("c1", {"x": [], "y": []})
    events = [*c.finished_event("x"), c.erred_event("y")]
    out = c.handle_list(events)
    notes = [i for i in out if isinstance(i, (ClientKeysInMemory, ClientKeyErred))]
    assert [type(n).__name__ for n in notes] == ["ClientKeysInMemory", "ClientKeyErred"]
