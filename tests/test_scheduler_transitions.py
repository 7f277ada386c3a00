"""Unit tests of the scheduler core, event by event and transition by transition.

Every test drives a ``SchedulerState`` through the simulated cluster of
``_driver.py``, which validates the state and checks the instructions against
its model of the workers after every batch.
"""

from __future__ import annotations

import pytest
from _driver import Cluster, computed_keys, computes, freed, of_type, spec

from sched_core import (
    CancelKeys,
    ClientError,
    ClientKeyErred,
    ClientKeysCancelled,
    ClientKeysInMemory,
    ClientReleasesKeys,
    ClientWantsKeys,
    ComputeTask,
    FreeKeys,
    GraphSubmitted,
    KeysScattered,
    ReplicasAdded,
    SchedulerState,
    TaskErred,
    TaskFinished,
    WorkerAdded,
    WorkerHeartbeat,
    validate_state,
)


def cluster(*workers: tuple[str, int], **kwargs: object) -> Cluster:
    c = Cluster(**kwargs)
    for address, nthreads in workers:
        c.add_worker(address, nthreads)
    return c


# ----------------------------------------------------------------------
# Submitting a graph


def test_graph_with_root_and_dependent_tasks() -> None:
    c = cluster(("a", 2), ("b", 2))
    out = c.submit("c1", {"x": [], "y": [], "z": ["x", "y"]}, ["z"])
    assert sorted(computed_keys(out)) == ["x", "y"]
    assert c.states() == {"x": "processing", "y": "processing", "z": "waiting"}
    for instr in computes(out):
        assert instr.who_has == {} and instr.nbytes == {}
        assert instr.run_spec == ("run", instr.key)
    assert of_type(out, ClientKeysInMemory) == []


def test_compute_task_carries_who_has_and_nbytes_of_dependencies() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"]), spec("y", workers=["b"]), spec("z", ["x", "y"])], ["z"])
    c.finish("x", nbytes=1234)
    out = c.finish("y", nbytes=56)
    [instr] = computes(out)
    assert instr.key == "z"
    assert instr.who_has == {"x": ["a"], "y": ["b"]}
    assert instr.nbytes == {"x": 1234, "y": 56}
    assert c.state_of("z") == "processing"


def test_compute_task_lists_every_replica() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("c1", {"x": []}, ["x"])
    [holder] = c.running_on("x")
    c.finish("x", nbytes=10)
    other = next(a for a in ["a", "b", "c"] if a != holder)
    c.replicate("x", other)
    out = c.submit("c1", [spec("y", ["x"])], ["y"])
    [instr] = computes(out)
    assert sorted(instr.who_has["x"]) == sorted([holder, other])
    assert instr.worker in (holder, other)


def test_submission_without_workers_waits_for_one() -> None:
    c = Cluster()
    out = c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    assert out == []
    assert c.state_of("y") == "waiting"
    # Without threads any root group is large: x waits in the queue.
    assert c.state_of("x") == "queued"
    out = c.add_worker("a", 1)
    assert computed_keys(out) == ["x"]
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_lost_task_without_workers_waits_for_one() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []}, ["x"])
    c.finish("x")
    c.remove_worker("a", expected=True)  # x is lost with it: recomputed later
    assert c.state_of("x") == "queued"
    assert list(c.state.queued.values()) == [c.state.tasks["x"]]
    c.add_worker("b", 1)
    assert c.state_of("x") == "processing"


def test_small_root_group_goes_straight_to_workers() -> None:
    # 4 threads: a group of 8 tasks is not "rootish" (needs more than 2 x 4).
    c = cluster(("a", 2), ("b", 2))
    out = c.submit("c1", {f"x-{i}": [] for i in range(8)})
    assert len(computes(out)) == 8
    assert c.state.n_queued() == 0
    assert sorted(len(c.workers[w].running) for w in "ab") == [4, 4]


def test_large_root_group_is_queued_and_filled_to_capacity() -> None:
    c = cluster(("a", 2), ("b", 2))
    out = c.submit("c1", {f"x-{i}": [] for i in range(9)})
    capacities = {a: ws.capacity for a, ws in c.state.workers.items()}
    assert capacities == {"a": 4, "b": 4}  # nthreads x 2 before anything is measured
    assert len(computes(out)) == 8
    assert c.state.n_queued() == 1
    assert {a: len(sim.running) for a, sim in c.workers.items()} == {"a": 4, "b": 4}
    assert [ts.state_name for ts in c.state.queued.values()] == ["queued"]
    # The queue hands out tasks in priority order: x-8 was submitted last.
    assert c.state_of("x-8") == "queued"


def test_queued_tasks_refill_the_worker_that_finished() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", {f"x-{i}": [] for i in range(10)})
    assert c.state.n_queued() == 6
    out = c.finish("x-0")
    assert [(i.worker, i.key) for i in computes(out)] == [(c.state.tasks["x-0"].who_has[0].address, "x-4")]
    assert c.state.n_queued() == 5
    c.run()
    assert c.clients["c1"].in_memory() == {f"x-{i}" for i in range(10)}


def test_queue_hands_out_tasks_in_priority_order() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {f"x-{i}": [] for i in range(12)})
    order = []
    while c.outstanding():
        work = sorted(c.outstanding(), key=lambda wk: c.state.tasks[wk[1]].priority)
        order.append(work[0][1])
        c.finish(work[0][1])
    assert order == [f"x-{i}" for i in range(12)]


def test_root_group_with_few_shared_dependencies_is_rootish() -> None:
    # Every x-i depends on one small "setup" task: still a root-like group.
    c = cluster(("a", 1))
    c.submit("c1", {"setup": [], **{f"x-{i}": ["setup"] for i in range(6)}}, [f"x-{i}" for i in range(6)])
    c.finish("setup")
    assert c.state.n_queued() == 4
    assert len(c.workers["a"].running) == 2


def test_non_root_task_is_placed_near_its_largest_dependency() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"]), spec("y", workers=["b"])], ["x", "y"])
    c.finish("x", nbytes=50_000_000)
    c.finish("y", nbytes=10)
    out = c.submit("c1", [spec("big", ["x", "y"]), spec("small", ["y"])], ["big", "small"])
    placed = {i.key: i.worker for i in computes(out)}
    assert placed == {"big": "a", "small": "b"}


def test_placement_spreads_independent_work_by_occupancy() -> None:
    c = cluster(("a", 1), ("b", 1))
    out = c.submit("c1", {"x": [], "y": []})
    assert sorted(i.worker for i in computes(out)) == ["a", "b"]


# ----------------------------------------------------------------------
# Finishing


def test_finished_task_goes_to_memory_and_dependents_run() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"], "z": ["y"]}, ["z"])
    out = c.finish("x")
    assert computed_keys(out) == ["y"]
    assert c.state_of("x") == "memory"
    assert c.state_of("y") == "processing"
    assert c.state_of("z") == "waiting"
    out = c.finish("y")
    assert computed_keys(out) == ["z"]
    # x is no longer needed: its data is freed, the task is kept (released) for z's lineage.
    assert freed(out) == ["x"]
    assert c.state_of("x") == "released"
    out = c.finish("z")
    assert freed(out) == ["y"]
    assert of_type(out, ClientKeysInMemory)[0].keys == ["z"]
    assert c.states() == {"x": "released", "y": "released", "z": "memory"}


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


def test_intermediate_is_freed_once_all_dependents_finished() -> None:
    c = cluster(("a", 3))
    c.submit("c1", {"x": [], "y1": ["x"], "y2": ["x"]}, ["y1", "y2"])
    c.finish("x")
    out = c.finish("y1")
    assert freed(out) == []
    assert c.state_of("x") == "memory"
    out = c.finish("y2")
    assert freed(out) == ["x"]
    assert c.state_of("x") == "released"
    assert c.state.workers["a"].nbytes == 200


def test_wanted_intermediate_is_kept() -> None:
    c = cluster(("a", 2))
    c.submit("c1", {"x": [], "y": ["x"]}, ["x", "y"])
    c.run()
    assert c.states() == {"x": "memory", "y": "memory"}
    out = c.release("c1", ["x"])
    assert freed(out) == ["x"]
    assert c.state_of("x") == "released"


def test_unwanted_result_is_freed_at_once() -> None:
    # A task nobody wants (a leftover key of the graph) is freed when it finishes.
    c = cluster(("a", 2))
    c.submit("c1", {"x": [], "y": ["x"], "extra": ["x"]}, ["y"])
    assert c.state_of("extra") is None
    c.run()
    assert c.states() == {"x": "released", "y": "memory"}


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
# Errors


def test_erred_task_blames_itself_and_dependents() -> None:
    c = cluster(("a", 2))
    c.submit("c1", {"x": [], "y": ["x"], "z": ["y"], "other": []}, ["z", "other"])
    c.submit("c2", [spec("x")], ["x"])
    err = RuntimeError("boom")
    out = c.err("x", exception=err)
    assert c.states()["x"] == "erred"
    assert c.state_of("y") == "erred"
    assert c.state_of("z") == "erred"
    assert c.state_of("other") == "processing"
    erred = {(e.client, e.key): e for e in of_type(out, ClientKeyErred)}
    assert sorted(erred) == [("c1", "z"), ("c2", "x")]
    assert erred["c1", "z"].blamed_key == "x"
    assert erred["c1", "z"].exception is err
    assert erred["c1", "z"].traceback == "tb-x"
    assert erred["c2", "x"].blamed_key == "x"
    assert c.state.tasks["z"].exception_blame is c.state.tasks["x"]
    assert computes(out) == []
    c.finish("other")
    c.release("c1", ["z", "other"])
    c.release("c2", ["x"])
    c.assert_empty()


def test_error_reaches_dependents_not_yet_reached() -> None:
    # Dependents that were still waiting on another dependency err too.
    c = cluster(("a", 2))
    c.submit("c1", [spec("x"), spec("slow"), spec("y", ["x", "slow"])], ["y"])
    out = c.err("x")
    assert c.state_of("y") == "erred"
    # slow is no longer needed: the worker is told to drop it.
    assert freed(out) == ["slow"]
    assert c.state_of("slow") == "released"
    [note] = of_type(out, ClientKeyErred)
    assert (note.key, note.blamed_key) == ("y", "x")


def test_submitting_on_top_of_an_erred_key_errs_at_once() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.err("x")
    out = c.submit("c2", {"x": [], "y": ["x"]}, ["y"])
    [note] = of_type(out, ClientKeyErred)
    assert (note.client, note.key, note.blamed_key, note.exception) == ("c2", "y", "x", "boom-x")
    assert computes(out) == []


def test_retries_then_success() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", retries=2)], ["x"])
    out = c.err("x")
    assert computed_keys(out) == ["x"]
    assert of_type(out, ClientKeyErred) == []
    out = c.err("x")
    assert computed_keys(out) == ["x"]
    c.finish("x")
    assert c.state_of("x") == "memory"
    assert c.clients["c1"].status == {"x": "memory"}


def test_retries_exhausted() -> None:
    c = cluster(("a", 1))
    c.submit("c1", [spec("x", retries=1), spec("y", ["x"])], ["y"])
    c.err("x")
    out = c.err("x")
    assert c.state_of("x") == "erred"
    [note] = of_type(out, ClientKeyErred)
    assert (note.key, note.blamed_key) == ("y", "x")


def test_released_erred_task_is_forgotten() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    c.err("x")
    c.release("c1", ["y"])
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
# Workers


def test_replicas_added() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"])], ["x"])
    c.finish("x", nbytes=70)
    c.workers["b"].data["x"] = 70
    out = c.handle(ReplicasAdded("b", ["x"]))
    assert out == []
    assert sorted(ws.address for ws in c.state.tasks["x"].who_has) == ["a", "b"]
    assert c.state.workers["b"].nbytes == 70
    # Twice is the same as once.
    assert c.handle(ReplicasAdded("b", ["x"])) == []
    assert c.state.workers["b"].nbytes == 70


def test_replica_of_unknown_or_erred_key_is_freed() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("e", workers=["a"])])
    c.err("e")
    c.workers["b"].data["zzz"] = 1
    c.workers["b"].data["e"] = 1
    out = c.handle(ReplicasAdded("b", ["zzz", "e"], {"zzz": 1, "e": 1}))
    assert sorted(freed(out, "b")) == ["e", "zzz"]
    assert c.state_of("e") == "erred"
    # From a worker the scheduler does not know: ignored.
    before = c.snapshot()
    assert c.handle(ReplicasAdded("ghost", ["e"])) == []
    assert c.snapshot() == before


def test_replica_of_a_key_being_computed_is_its_result() -> None:
    # b holds a valid copy of x (from an earlier computation) while x runs
    # on a: the copy is as good as the result, the run on a is cancelled.
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"])], ["y"])
    assert c.running_on("x") == ["a"]
    c.workers["b"].data["x"] = 40
    out = c.handle(ReplicasAdded("b", ["x"], {"x": 40}))
    assert freed(out, "a") == ["x"]
    assert c.state_of("x") == "memory"
    assert [ws.address for ws in c.state.tasks["x"].who_has] == ["b"]
    assert c.state.tasks["x"].nbytes == 40
    [instr] = computes(out)
    assert (instr.key, instr.who_has, instr.nbytes) == ("y", {"x": ["b"]}, {"x": 40})


def test_worker_added_twice_replaces_the_old_one() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"]), spec("y", workers=["b"])], ["x", "y"])
    c.finish("y")
    out = c.add_worker("a", 2)  # restarted
    assert computed_keys(out) == ["x"]
    assert c.state.workers["a"].nthreads == 2
    assert c.state.total_nthreads == 3
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "y"}


def test_worker_without_threads_is_not_added() -> None:
    c = Cluster()
    c.handle(WorkerAdded("a", 0))
    assert c.state.workers == {}
    assert c.state.total_nthreads == 0


def test_heartbeat_updates_capacity_and_fills() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {f"x-{i}": [] for i in range(50)})
    assert len(c.workers["a"].running) == 2
    for _ in range(3):
        c.finish(c.outstanding()[0][1], duration=0.001)
    before = c.state.workers["a"].capacity
    assert len(c.workers["a"].running) == before
    out = c.handle(WorkerHeartbeat("a", latency=0.05))
    after = c.state.workers["a"].capacity
    assert after > before
    assert len(c.workers["a"].running) == after
    assert len(computes(out)) == after - before
    # A heartbeat of an unknown worker is counted as stale and changes nothing.
    stale = c.state.n_stale_messages
    assert c.handle(WorkerHeartbeat("ghost", latency=1.0)) == []
    assert c.state.n_stale_messages == stale + 1


# ----------------------------------------------------------------------
# Stale and duplicate messages


def test_finished_from_unknown_worker_is_ignored() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    before = c.snapshot()
    stale = c.state.n_stale_messages
    out = c.handle(TaskFinished("ghost", "x", 10, 0.1))
    assert out == []
    assert c.snapshot() == before
    assert c.state.n_stale_messages == stale + 1


def test_finished_unknown_key_is_freed_on_that_worker() -> None:
    c = cluster(("a", 1))
    c.workers["a"].data["mystery"] = 3
    before = c.snapshot()
    out = c.handle(TaskFinished("a", "mystery", 3, 0.1))
    assert [(i.worker, i.keys) for i in out] == [("a", ["mystery"])]
    assert c.snapshot() == before


def test_duplicate_finish_is_a_no_op() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.finish("x", nbytes=5)
    before = c.snapshot()
    out = c.handle(TaskFinished("a", "x", 5, 0.1))
    assert out == []
    assert c.snapshot() == before
    assert c.state.workers["a"].nbytes == 5


def test_duplicate_finish_in_one_batch() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    events = c.finished_event("x")
    out = c.handle_list(events + events)
    assert computed_keys(out) == ["y"]
    assert len(of_type(out, ClientKeysInMemory)) == 0
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_finish_of_a_task_that_is_not_processing_is_freed() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": [], "y": ["x"]}, ["y"])
    before = c.snapshot()
    c.workers["a"].data["y"] = 1  # the worker claims it ran y, which still waits for x
    out = c.handle(TaskFinished("a", "y", 1, 0.1))
    assert freed(out, "a") == ["y"]
    assert c.snapshot() == before


def test_erred_for_a_task_that_is_not_processing_is_ignored() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"]), spec("y", ["x"])], ["y"])
    c.finish("x")
    before = c.snapshot()
    for event in [
        TaskErred("a", "x", "late", "tb"),  # in memory
        TaskErred("b", "y", "wrong worker", "tb"),  # processing on a
        TaskErred("ghost", "y", "unknown worker", "tb"),
        TaskErred("a", "nope", "unknown key", "tb"),
    ]:
        assert c.handle(event) == []
        assert c.snapshot() == before
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_stale_erred_after_release_is_ignored() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.release("c1", ["x"])
    assert c.handle(TaskErred("a", "x", "e", "tb")) == []
    c.assert_empty()


# ----------------------------------------------------------------------
# Restrictions


def test_worker_restriction() -> None:
    c = cluster(("a", 1), ("b", 1))
    out = c.submit("c1", [spec(f"x-{i}", workers=["b"]) for i in range(5)])
    assert {i.worker for i in computes(out)} == {"b"}
    assert len(computes(out)) == 5  # restricted tasks are never queued
    c.run()
    assert all(ws.address == "b" for ts in c.state.tasks.values() for ws in ts.who_has)


def test_worker_restriction_by_name() -> None:
    c = Cluster()
    c.handle(WorkerAdded("tcp://1.2.3.4:5", 1, name="alice"))
    c.handle(WorkerAdded("tcp://1.2.3.4:6", 1, name="bob"))
    out = c.submit("c1", [spec("x", workers=["bob"])])
    assert [i.worker for i in computes(out)] == ["tcp://1.2.3.4:6"]


def test_restriction_to_absent_worker_waits_for_it() -> None:
    c = cluster(("a", 1))
    out = c.submit("c1", [spec("x", workers=["z"]), spec("y", ["x"])], ["y"])
    assert computes(out) == []
    assert c.state_of("x") == "no-worker"
    assert list(c.state.unrunnable) == [c.state.tasks["x"]]
    out = c.add_worker("b", 4)
    assert computes(out) == []
    out = c.add_worker("z", 1)
    assert [(i.worker, i.key) for i in computes(out)] == [("z", "x")]
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_loose_restriction_runs_anywhere_when_no_match() -> None:
    c = cluster(("a", 1))
    out = c.submit("c1", [spec("x", workers=["z"], allow_other_workers=True)])
    assert [i.worker for i in computes(out)] == ["a"]


def test_loose_restriction_prefers_the_named_worker() -> None:
    c = cluster(("a", 1), ("b", 1))
    out = c.submit("c1", [spec(f"x-{i}", workers=["b"], allow_other_workers=True) for i in range(3)])
    assert {i.worker for i in computes(out)} == {"b"}


def test_resource_restriction() -> None:
    c = cluster(("a", 4))
    out = c.submit("c1", [spec("g", resources={"GPU": 1.0}), spec("y", ["g"])], ["y"])
    assert computes(out) == []
    assert c.state_of("g") == "no-worker"
    c.handle(WorkerAdded("small", 1, resources={"GPU": 0.5}))
    assert c.state_of("g") == "no-worker"
    out = c.handle(WorkerAdded("gpu", 1, resources={"GPU": 2.0}))
    [instr] = computes(out)
    assert (instr.worker, instr.key, instr.resources) == ("gpu", "g", {"GPU": 1.0})
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_resource_restriction_with_loose_restriction() -> None:
    c = cluster(("a", 1))
    out = c.submit("c1", [spec("g", resources={"GPU": 1.0}, allow_other_workers=True)])
    assert [i.worker for i in computes(out)] == ["a"]


def test_resource_restricted_task_waits_again_when_its_worker_leaves() -> None:
    c = cluster(("a", 1))
    c.handle(WorkerAdded("gpu", 1, resources={"GPU": 1.0}))
    c.submit("c1", [spec("g", resources={"GPU": 1.0})])
    c.remove_worker("gpu")
    assert c.state_of("g") == "no-worker"
    out = c.handle(WorkerAdded("gpu2", 1, resources={"GPU": 1.0}))
    assert [(i.worker, i.key) for i in computes(out)] == [("gpu2", "g")]


# ----------------------------------------------------------------------
# Priorities


def test_user_priority_jumps_the_queue() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {f"low-{i}": [] for i in range(20)})
    assert c.state.n_queued() == 18
    c.submit("c1", [spec(f"high-{i}", priority=1) for i in range(5)])
    order = []
    while c.outstanding():
        key = c.outstanding()[0][1]
        out = c.finish(key)
        order.extend(computed_keys(out))
    assert order[:5] == [f"high-{i}" for i in range(5)]
    assert order[5:] == [f"low-{i}" for i in range(2, 20)]


def test_negative_user_priority_runs_last() -> None:
    c = cluster(("a", 1))
    c.submit("c1", [spec(f"late-{i}", priority=-1) for i in range(6)])
    c.submit("c1", {f"x-{i}": [] for i in range(6)})
    order = []
    while c.outstanding():
        key = c.outstanding()[0][1]
        order.extend(computed_keys(c.finish(key)))
    assert order == [f"x-{i}" for i in range(6)] + [f"late-{i}" for i in range(2, 6)]


def test_earlier_submission_runs_first_at_equal_priority() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {f"a-{i}": [] for i in range(6)})
    c.submit("c2", {f"b-{i}": [] for i in range(6)})
    prios_a = [c.state.tasks[f"a-{i}"].priority for i in range(6)]
    prios_b = [c.state.tasks[f"b-{i}"].priority for i in range(6)]
    assert max(prios_a) < min(prios_b)


# ----------------------------------------------------------------------
# Order of instructions within one batch


def test_free_precedes_a_later_compute_of_the_same_key_on_the_same_worker() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    out = c.handle(ClientReleasesKeys("c1", ["x"]), GraphSubmitted("c1", [spec("x")], ["x"]))
    kinds = [(type(i).__name__, i.worker) for i in out if isinstance(i, (FreeKeys, ComputeTask))]
    assert kinds == [("FreeKeys", "a"), ("ComputeTask", "a")]
    assert c.state_of("x") == "processing"
    c.finish("x")
    assert c.clients["c1"].status == {"x": "memory"}


def test_free_of_data_precedes_recompute_on_the_same_worker() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    c.finish("x")
    out = c.handle(CancelKeys("c1", ["x"]), GraphSubmitted("c2", [spec("x")], ["x"]))
    assert [type(i).__name__ for i in out if isinstance(i, (FreeKeys, ComputeTask))] == ["FreeKeys", "ComputeTask"]
    assert out.index(of_type(out, FreeKeys)[0]) < out.index(computes(out)[0])


def test_notifications_keep_their_order_per_client() -> None:
    # An in-memory notice queued before an error is sent before it.
    c = cluster(("a", 2))
    c.submit("c1", {"x": [], "y": []})
    events = [*c.finished_event("x"), c.erred_event("y")]
    out = c.handle_list(events)
    notes = [i for i in out if isinstance(i, (ClientKeysInMemory, ClientKeyErred))]
    assert [type(n).__name__ for n in notes] == ["ClientKeysInMemory", "ClientKeyErred"]


# ----------------------------------------------------------------------
# Counters and bookkeeping


def test_group_counts_follow_the_tasks() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {f"x-{i}": [] for i in range(5)} | {"y": [f"x-{i}" for i in range(5)]}, ["y"])
    tg = c.state.groups["x"]
    assert tg.n_tasks == 5
    assert tg.counts.queued + tg.counts.processing == 5
    c.run()
    assert tg.counts.released == 5
    assert c.state.groups["y"].counts.memory == 1
    assert c.state.counts.memory == 1
    c.release("c1", ["y"])
    assert tg.n_tasks == 0
    c.assert_empty()


def test_unknown_event_type_is_refused() -> None:
    state = SchedulerState()
    with pytest.raises(TypeError):
        state.handle_events([object()])  # type: ignore[list-item]
    validate_state(state)


def test_same_events_same_instructions() -> None:
    # Deterministic: two schedulers fed the same events say the same things.
    def run() -> list[str]:
        c = cluster(("a", 2), ("b", 1), ("c", 3))
        c.submit("c1", {f"x-{i}": [] for i in range(30)} | {f"y-{i}": [f"x-{i}", f"x-{i + 1}"] for i in range(29)})
        c.run()
        c.remove_client("c1")
        return [repr(i) + repr(getattr(i, "keys", None)) for i in c.history]

    assert run() == run()


# ----------------------------------------------------------------------
# A finish that crossed a FreeKeys on the wire
#
# A worker finishes x and reports it while the scheduler, at the same time,
# tells it to forget x.  The worker drops x on the FreeKeys, so when its
# report arrives it no longer holds x: the report must not make the
# scheduler believe it does.


def released_then_moved() -> Cluster:
    """x ran on a, was released (FreeKeys to a), then resubmitted to run on b."""
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x")], ["x"])
    assert c.running_on("x") == ["a"]
    out = c.release("c1", ["x"])
    assert freed(out, "a") == ["x"]
    out = c.submit("c1", [spec("x", workers=["b"])], ["x"])
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "x")]
    return c


def test_finish_crossing_a_free_does_not_steal_the_task() -> None:
    c = released_then_moved()
    c.check = False  # look at the state directly
    # Sent by a before it saw the FreeKeys, with the run id it was given.
    c.handle(TaskFinished("a", "x", 100, 0.1, c.last_run_id("a", "x")))
    ts = c.state.tasks["x"]
    assert ts.who_has is None or "a" not in [ws.address for ws in ts.who_has]
    assert ts.state_name == "processing"
    assert ts.processing_on is not None and ts.processing_on.address == "b"


def test_finish_crossing_a_free_does_not_add_a_replica() -> None:
    c = released_then_moved()
    c.finish("x", "b")
    c.check = False
    c.handle(TaskFinished("a", "x", 100, 0.1, c.last_run_id("a", "x")))
    ts = c.state.tasks["x"]
    assert [ws.address for ws in ts.who_has] == ["b"]
    assert c.state.workers["a"].has_what == {}


def test_result_of_an_earlier_run_on_the_same_worker_is_stale() -> None:
    # x ran on a, was freed there, and was sent to a again: the report of the
    # first run (which crossed the FreeKeys) is not the result of the second.
    c = cluster(("a", 1))
    c.submit("c1", [spec("x")], ["x"])
    first = c.last_run_id("a", "x")
    c.release("c1", ["x"])
    out = c.submit("c1", [spec("x")], ["x"])
    [instr] = computes(out)
    assert instr.worker == "a" and instr.run_id != first
    stale = c.state.n_stale_messages
    assert c.handle(TaskFinished("a", "x", 100, 0.1, first)) == []
    assert c.handle(TaskErred("a", "x", "old", "tb", first)) == []
    assert c.state.n_stale_messages == stale + 2
    assert c.state_of("x") == "processing"
    out = c.finish("x")
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c1", ["x"])]


def test_run_ids_are_unique() -> None:
    c = cluster(("a", 2), ("b", 2))
    c.submit("c1", {f"x-{i}": [] for i in range(30)} | {"y": [f"x-{i}" for i in range(30)]}, ["y"])
    c.remove_worker("a")
    c.add_worker("c", 2)
    c.run()
    run_ids = [i.run_id for i in c.history if isinstance(i, ComputeTask)]
    assert len(set(run_ids)) == len(run_ids) == c.n_computes
