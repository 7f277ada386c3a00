"""Unit tests of the scheduler core: workers paused by memory pressure.

A paused worker (``WorkerStatusChanged(address, paused=True)``) keeps its data
and finishes what it runs, but is not a placement candidate: no new task, no
queued root task, and the tasks it has not started may be stolen.  When every
worker is paused, ready tasks wait (no-worker or queued) instead of erring, and
go out as soon as a worker resumes.  Every test drives a ``SchedulerState``
through the simulated cluster of ``_driver.py``, which validates the state after
each batch.
"""

from __future__ import annotations

from _driver import computed_keys, computes, of_type, spec
from _helpers import cluster

from sched_core import ClientError, StealRequest, Tick, WorkerStatusChanged


def pause(c, address: str):  # type: ignore[no-untyped-def]
    return c.handle(WorkerStatusChanged(address, True))


def resume(c, address: str):  # type: ignore[no-untyped-def]
    return c.handle(WorkerStatusChanged(address, False))


def test_a_paused_worker_gets_no_new_task() -> None:
    c = cluster(("a", 1), ("b", 1))
    assert pause(c, "a") == []
    assert c.state.n_paused == 1 and c.state.workers["a"].paused
    out = c.submit("c1", {"x": [], "y": [], "z": []})
    assert {ins.worker for ins in computes(out)} == {"b"}
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "y", "z"}
    assert not any(ins.worker == "a" for ins in computes(c.history))


def test_a_dependency_held_only_by_a_paused_worker_is_fetched_elsewhere() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"])], ["x"])
    c.finish("x", nbytes=10**9)  # locality would pull "y" to "a"
    pause(c, "a")
    out = c.submit("c1", [spec("y", ["x"])], ["y"])
    [compute] = computes(out)
    assert compute.worker == "b" and compute.who_has == {"x": ["a"]}  # a paused worker still serves its data
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "y"}


def test_when_every_worker_is_paused_tasks_wait_and_start_on_resume() -> None:
    c = cluster(("a", 1), ("b", 1))
    pause(c, "a")
    pause(c, "b")
    out = c.submit("c1", {"x": [], "y": ["x"]})
    assert computes(out) == []
    assert of_type(out, ClientError) == []
    assert c.state.task_state("x") == "no-worker"
    assert c.state.task_state("y") == "waiting"
    out = resume(c, "b")
    assert [(ins.worker, ins.key) for ins in computes(out)] == [("b", "x")]
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "y"}


def test_queued_root_tasks_are_not_given_to_a_paused_worker() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", {f"r-{i}": [] for i in range(20)})  # root-ish: queued on the scheduler
    assert c.state.n_queued() > 0
    assert {ins.worker for ins in computes(c.history)} == {"a", "b"}
    pause(c, "a")
    for key in list(c.workers["a"].running):
        out = c.finish(key, worker="a")
        assert not any(ins.worker == "a" for ins in computes(out)), "a finished task refilled a paused worker"
    assert c.workers["a"].running == {}
    out = c.handle(Tick())
    assert not any(ins.worker == "a" for ins in computes(out))
    out = resume(c, "a")
    assert computes(out) and {ins.worker for ins in computes(out)} == {"a"}
    c.run()
    assert len(c.clients["c1"].in_memory()) == 20


def test_all_paused_root_tasks_stay_queued() -> None:
    c = cluster(("a", 1))
    pause(c, "a")
    out = c.submit("c1", {f"r-{i}": [] for i in range(20)})
    assert computes(out) == [] and of_type(out, ClientError) == []
    assert c.state.n_queued() == 20
    out = resume(c, "a")
    assert len(computes(out)) == c.state.workers["a"].capacity
    c.run()
    assert len(c.clients["c1"].in_memory()) == 20


def test_a_task_restricted_to_a_paused_worker_waits_for_it() -> None:
    c = cluster(("a", 1), ("b", 1))
    pause(c, "a")
    out = c.submit("c1", [spec("x", workers=["a"]), spec("y", workers=["a"], allow_other_workers=True)])
    assert [(ins.worker, ins.key) for ins in computes(out)] == [("b", "y")]  # loose: anyone running
    assert c.state.task_state("x") == "no-worker"
    out = resume(c, "a")
    assert [(ins.worker, ins.key) for ins in computes(out)] == [("a", "x")]
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "y"}


def test_tasks_not_started_on_a_paused_worker_are_stolen() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("big", workers=["a"])], ["big"])
    c.finish("big", nbytes=10**12)  # moving it costs far more than the tasks' run time
    c.submit("c1", [spec(f"t-{i}", ["big"]) for i in range(4)])  # all go to "a", for locality
    on_a = sorted(c.workers["a"].running)
    assert len(on_a) == 4
    c.start(on_a[0])  # one of them runs already
    assert of_type(c.handle(Tick()), StealRequest) == [], "a running worker keeps tasks that are costly to move"
    pause(c, "a")
    out = c.handle(Tick())
    # A paused worker starts nothing, so every task it has is offered, whatever moving costs.
    [request] = of_type(out, StealRequest)  # b has one free slot
    assert request.worker == "a" and request.key != on_a[0]
    out = c.handle_list(c.steal_responses())
    assert [(ins.worker, ins.key) for ins in computes(out)] == [("b", request.key)]
    c.run()
    assert c.clients["c1"].in_memory() == {"big", *on_a}


def test_a_steal_whose_thief_paused_meanwhile_goes_elsewhere() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("c1", [spec("x", workers=["a"])], ["x"])
    c.finish("x")
    c.submit("c1", [spec(f"t-{i}", ["x"]) for i in range(3)])  # all go to "a", for locality
    assert len(c.workers["a"].running) == 3
    pause(c, "a")
    c.handle(Tick())
    assert {ins.worker for ins in of_type(c.history, StealRequest)} == {"a"}
    thieves = [ts.steal_target.address for ts in c.state.tasks.values() if ts.steal_target is not None]
    assert thieves
    for address in set(thieves):
        pause(c, address)
    out = c.handle_list(c.steal_responses())
    assert computes(out) == []  # nobody running: the stolen tasks wait
    resume(c, "a")
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "t-0", "t-1", "t-2"}


def test_removing_a_paused_worker_keeps_the_count() -> None:
    c = cluster(("a", 1), ("b", 1))
    pause(c, "a")
    c.remove_worker("a")
    assert c.state.n_paused == 0
    out = c.add_worker("a", 1)  # back, running
    assert c.state.n_paused == 0 and not c.state.workers["a"].paused
    assert out == []


def test_repeated_and_unknown_status_changes() -> None:
    c = cluster(("a", 1))
    pause(c, "a")
    assert pause(c, "a") == []
    assert c.state.n_paused == 1
    stale = c.state.n_stale_messages
    assert c.handle(WorkerStatusChanged("ghost", True)) == []
    assert c.state.n_stale_messages == stale + 1
    resume(c, "a")
    assert resume(c, "a") == []
    assert c.state.n_paused == 0
    out = c.submit("c1", {"x": []})
    assert computed_keys(out) == ["x"]
