"""Unit tests of the scheduler core: a task's life from submission to memory or error.

Submission, placement and queuing, finishing, errors and retries, priorities,
the order of instructions within one batch, and the core's bookkeeping.  What
clients ask for is in ``test_scheduler_clients.py``, what workers report in
``test_scheduler_workers.py``.

Every test drives a ``SchedulerState`` through the simulated cluster of
``_driver.py``, which validates the state and checks the instructions against
its model of the workers after every batch.
"""

from __future__ import annotations

import pytest
from _driver import Cluster, computed_keys, computes, freed, of_type, spec
from _helpers import cluster

from sched_core import (
    CancelKeys,
    ClientKeyErred,
    ClientKeysInMemory,
    ClientReleasesKeys,
    ComputeTask,
    FreeKeys,
    GraphSubmitted,
    SchedulerState,
    validate_state,
)


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
