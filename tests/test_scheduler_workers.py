"""Unit tests of the scheduler core: workers joining, reporting and restricting.

Workers added and heartbeats, replicas, worker and resource restrictions, and
stale or duplicate reports (including a finish that crossed a FreeKeys on the
wire).  Workers leaving and the recovery of lost data are in
``test_scheduler_recovery.py``.  Every test drives a ``SchedulerState`` through
the simulated cluster of ``_driver.py``.
"""

from __future__ import annotations

from _driver import Cluster, computed_keys, computes, freed, of_type, spec
from _helpers import cluster

from sched_core import (
    ClientKeysInMemory,
    ComputeTask,
    ReplicasAdded,
    TaskErred,
    TaskFinished,
    WorkerAdded,
    WorkerHeartbeat,
)


# ----------------------------------------------------------------------
# Workers joining and heartbeats


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
# Replicas


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
