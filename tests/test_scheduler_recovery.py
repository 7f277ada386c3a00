"""Recovery: workers disappearing, data lost, tasks suspected of killing workers."""

from __future__ import annotations

from _driver import Cluster, computed_keys, computes, freed, of_type, spec
from _helpers import cluster

from sched_core import (
    ClientKeyErred,
    ComputeTask,
    FreeKeys,
    WorkerRemoved,
    ClientKeyLost,
    ClientKeysInMemory,
    KeysScattered,
    MissingData,
    SchedulerError,
    TaskErred,
    TaskFinished,
    WorkerAdded,
)


# ----------------------------------------------------------------------
# A worker leaves while running tasks


def test_processing_tasks_are_rescheduled_on_other_workers() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", workers=["b"])])
    assert c.running_on("x") == ["a"]
    out = c.remove_worker("a")
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "x")]
    assert c.state.tasks["x"].suspicious == 1
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "y"}


def test_queued_work_of_a_removed_worker_goes_back_to_the_queue() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", {f"x-{i}": [] for i in range(20)})
    on_a = set(c.workers["a"].running)
    assert len(on_a) == 2 and c.state.n_queued() == 16
    out = c.remove_worker("a")
    # b is already full: a's tasks are queued again, in their priority order.
    assert computes(out) == []
    assert all(c.state_of(k) == "queued" for k in on_a)
    assert c.state.n_queued() == 18
    c.run()
    assert c.clients["c1"].in_memory() == {f"x-{i}" for i in range(20)}


def test_last_worker_leaving_parks_the_work_until_another_joins() -> None:
    c = cluster(("a", 2))
    c.submit("c1", [spec("r"), spec("s", ["r"]), spec("g", resources={"GPU": 1})], ["s", "g"])
    c.finish("r")
    assert c.state_of("s") == "processing"
    c.remove_worker("a")
    assert c.state_of("g") == "no-worker"
    assert c.state_of("s") == "waiting"
    assert c.state_of("r") == "queued"
    out = c.add_worker("b", 1)
    assert computed_keys(out) == ["r"]
    c.run()
    assert c.clients["c1"].status == {"s": "memory"}
    assert c.state_of("g") == "no-worker"


def test_result_of_a_removed_worker_arriving_late_is_ignored() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True)])
    c.remove_worker("a")
    [(worker, key, run_id)] = c.zombies
    assert (worker, key) == ("a", "x")
    before = c.snapshot()
    stale = c.state.n_stale_messages
    assert c.handle(TaskFinished("a", "x", 10, 0.1, run_id)) == []
    assert c.handle(TaskErred("a", "x", "e", "tb", run_id)) == []
    assert c.snapshot() == before
    assert c.state.n_stale_messages == stale + 2
    c.run()
    assert c.clients["c1"].status == {"x": "memory"}


def test_removing_an_unknown_worker_changes_nothing() -> None:
    c = cluster(("a", 1))
    c.submit("c1", {"x": []})
    before = c.snapshot()
    assert c.remove_worker("ghost") == []
    assert c.snapshot() == before


# ----------------------------------------------------------------------
# Data lost with a worker


def test_wanted_result_lost_with_its_worker_is_recomputed() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", {"x": []})
    holder = c.running_on("x")[0]
    other = "b" if holder == "a" else "a"
    c.finish("x")
    recomputed = c.state.n_recomputed
    out = c.remove_worker(holder)
    assert [(i.worker, i.key) for i in computes(out)] == [(other, "x")]
    assert c.state.n_recomputed == recomputed + 1
    out = c.finish("x")
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c1", ["x"])]


def test_replicated_result_survives_its_worker() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"])])
    c.finish("x")
    c.replicate("x", "b")
    out = c.remove_worker("a")
    assert out == []
    assert c.state_of("x") == "memory"
    assert [ws.address for ws in c.state.tasks["x"].who_has] == ["b"]


def test_dependency_lost_while_its_dependent_runs_elsewhere() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"]), spec("z", workers=["b"]), spec("y", ["x", "z"], workers=["b"])], ["y"])
    c.finish("x")
    c.finish("z")
    assert c.running_on("y") == ["b"]
    out = c.remove_worker("a")
    # y cannot get x any more: it is taken back, and x (restricted to the
    # gone worker) waits for it.
    assert freed(out, "b") == ["y"]
    assert c.state_of("y") == "waiting"
    assert c.state_of("x") == "no-worker"
    assert c.state_of("z") == "memory"
    out = c.add_worker("a", 1)
    assert computed_keys(out) == ["x"]
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_needed_dependency_lost_is_recomputed() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit(
        "c1",
        [spec("x", workers=["a"], allow_other_workers=True), spec("slow", workers=["b"]), spec("y", ["x", "slow"])],
        ["y"],
    )
    c.finish("x")
    assert c.state_of("y") == "waiting"  # for slow
    out = c.remove_worker("a")
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "x")]
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_chain_of_released_intermediates_is_recomputed_from_lineage() -> None:
    c = cluster(("a", 1), ("b", 1))
    chain = {"c-0": [], "c-1": ["c-0"], "c-2": ["c-1"], "c-3": ["c-2"]}
    c.submit("c1", [spec(k, d, workers=["a"], allow_other_workers=True) for k, d in chain.items()], ["c-3"])
    for k in ["c-0", "c-1", "c-2"]:
        c.finish(k)
    assert c.states() == {"c-0": "released", "c-1": "released", "c-2": "memory", "c-3": "processing"}
    out = c.remove_worker("a")
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "c-0")]
    order = ["c-0"]
    for k in ["c-0", "c-1", "c-2"]:
        order += computed_keys(c.finish(k))
    assert order == ["c-0", "c-1", "c-2", "c-3"]
    c.finish("c-3")
    assert c.clients["c1"].status == {"c-3": "memory"}
    assert c.states() == {"c-0": "released", "c-1": "released", "c-2": "released", "c-3": "memory"}


def test_wanted_result_and_its_lost_inputs() -> None:
    # y (in memory on a) and its input x (released) are both lost with a:
    # only what is wanted is recomputed, through its lineage.
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"]), spec("y", ["x"], workers=["a"])], ["y"])
    c.run()
    assert c.states() == {"x": "released", "y": "memory"}
    c.submit("c1", [spec("x", workers=["a"]), spec("y", ["x"], workers=["a"])], ["y"])
    c.remove_worker("a")
    assert c.states() == {"x": "no-worker", "y": "waiting"}
    c.add_worker("a2", 1)
    assert c.states() == {"x": "no-worker", "y": "waiting"}
    c.add_worker("a", 1)
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_processing_task_and_its_only_input_lost_together() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"])], ["y"])
    c.finish("x")
    assert c.running_on("y") == ["a"]
    out = c.remove_worker("a")
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "x")]
    assert c.state_of("y") == "waiting"
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


# ----------------------------------------------------------------------
# Scattered data


def scatter(c: Cluster, client: str, key: str, workers: list[str], nbytes: int = 10) -> list:
    for w in workers:
        c.workers[w].data[key] = nbytes
    return c.handle(KeysScattered(client, workers, {key: nbytes}))


def test_lost_scattered_data_is_reported_and_errs_its_dependents() -> None:
    c = cluster(("a", 1), ("b", 1))
    scatter(c, "c1", "d", ["a"])
    c.submit("c2", [spec("y", ["d"]), spec("z", ["y"])], ["z"])
    c.submit("c1", [spec("w", ["d"])], ["w"])
    assert c.state_of("y") == "processing"
    out = c.remove_worker("a")
    assert [(i.client, i.key) for i in of_type(out, ClientKeyLost)] == [("c1", "d")]
    erred = {(i.client, i.key): i for i in of_type(out, ClientKeyErred)}
    assert ("c2", "z") in erred and ("c1", "w") in erred
    for note in (erred["c2", "z"], erred["c1", "w"]):
        assert note.blamed_key == "d"
        assert isinstance(note.exception, SchedulerError)
        assert note.exception.kind == "lost-data"
        assert "'d'" in note.exception.message
    assert c.state_of("y") == "erred" and c.state_of("z") == "erred"
    assert computes(out) == []
    c.remove_client("c1")
    c.remove_client("c2")
    c.assert_empty()


def test_lost_scattered_data_nobody_holds_is_forgotten_quietly() -> None:
    c = cluster(("a", 1), ("b", 1))
    scatter(c, "c1", "d", ["a"])
    c.submit("c1", [spec("y", ["d"])], ["y"])
    c.run()
    c.release("c1", ["d"])
    assert c.state_of("d") == "released"
    out = c.remove_worker("a")  # y is lost too; recomputing it needs d
    assert [(i.client, i.key) for i in of_type(out, ClientKeyErred)] == [("c1", "y")]
    assert of_type(out, ClientKeyErred)[0].exception.kind == "lost-data"


def test_scattered_data_on_two_workers_survives_one() -> None:
    c = cluster(("a", 1), ("b", 1))
    scatter(c, "c1", "d", ["a", "b"])
    out = c.remove_worker("a")
    assert out == []
    assert c.state_of("d") == "memory"


def test_scatter_to_no_known_worker_is_lost_at_once() -> None:
    c = cluster(("a", 1))
    out = c.handle(KeysScattered("c1", ["ghost"], {"d": 5}))
    assert [(i.client, i.key) for i in of_type(out, ClientKeyLost)] == [("c1", "d")]
    assert c.state_of("d") == "erred"


def test_scattering_again_revives_lost_data() -> None:
    c = cluster(("a", 1), ("b", 1))
    scatter(c, "c1", "d", ["a"])
    c.remove_worker("a")
    assert c.state_of("d") == "erred"
    out = scatter(c, "c1", "d", ["b"])
    assert c.state_of("d") == "memory"
    assert [(i.client, i.keys) for i in of_type(out, ClientKeysInMemory)] == [("c1", ["d"])]
    out = c.submit("c1", [spec("y", ["d"])], ["y"])
    assert computed_keys(out) == ["y"]


# ----------------------------------------------------------------------
# Tasks that kill workers


def test_task_killing_too_many_workers_is_erred() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1), allowed_failures=1)
    c.submit("c1", [spec("x"), spec("y", ["x"])], ["y"])
    first = c.running_on("x")[0]
    out = c.remove_worker(first)
    assert computed_keys(out) == ["x"]
    second = c.running_on("x")[0]
    out = c.remove_worker(second)
    assert c.state_of("x") == "erred"
    assert c.state_of("y") == "erred"
    assert computes(out) == []
    [note] = of_type(out, ClientKeyErred)
    assert (note.key, note.blamed_key) == ("y", "x")
    assert isinstance(note.exception, SchedulerError)
    assert note.exception.kind == "killed-worker"
    assert "'x'" in note.exception.message and second in note.exception.message


def test_no_allowed_failures_errs_on_the_first_death() -> None:
    c = cluster(("a", 1), ("b", 1), allowed_failures=0)
    c.submit("c1", {"x": []})
    out = c.remove_worker(c.running_on("x")[0])
    [note] = of_type(out, ClientKeyErred)
    assert note.exception.kind == "killed-worker"


def test_graceful_removal_is_not_suspicious() -> None:
    c = Cluster(allowed_failures=0)
    c.add_worker("w0", 1)
    c.submit("c1", [spec("x"), spec("y", ["x"])], ["y"])
    for i in range(1, 6):
        c.add_worker(f"w{i}", 1)
        out = c.remove_worker(c.running_on("x")[0], expected=True)
        assert computed_keys(out) == ["x"]
        assert c.state.tasks["x"].suspicious == 0
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_only_tasks_running_on_the_dead_worker_are_suspected() -> None:
    c = cluster(("a", 1), ("b", 1), allowed_failures=0)
    c.submit("c1", [spec("x", workers=["a"]), spec("y", workers=["b"]), spec("z", ["x"], workers=["b"])], ["y", "z"])
    c.finish("x")
    out = c.remove_worker("a")  # x was in memory there, not running
    assert of_type(out, ClientKeyErred) == []
    assert c.state.tasks["x"].suspicious == 0
    assert c.state.tasks["y"].suspicious == 0


# ----------------------------------------------------------------------
# Missing data reported by a worker


def test_missing_data_removes_the_errant_replica_and_reschedules() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1), lossy=True)
    c.submit("c1", [spec("x", workers=["a"]), spec("big", workers=["c"])], ["x", "big"])
    c.finish("x", nbytes=10)
    c.finish("big", nbytes=10**9)
    c.replicate("x", "b")
    out = c.submit("c1", [spec("y", ["x", "big"])], ["y"])
    [instr] = computes(out)
    assert (instr.worker, sorted(instr.who_has["x"])) == ("c", ["a", "b"])
    c.lose("x", "a")  # say, a failed disk
    out = c.handle(MissingData("c", "x", "a"))
    assert [ws.address for ws in c.state.tasks["x"].who_has] == ["b"]
    assert freed(out, "a") == []
    # y is sent again, with the corrected locations, after being taken back.
    kinds = [(type(i).__name__, i.worker) for i in out]
    assert kinds == [("FreeKeys", "c"), ("ComputeTask", "c")]
    assert computes(out)[0].who_has == {"x": ["b"], "big": ["c"]}
    c.run()
    assert c.clients["c1"].in_memory() == {"x", "big", "y"}


def test_missing_data_of_the_only_replica_recomputes_it() -> None:
    c = cluster(("a", 1), ("b", 1), lossy=True)
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"], workers=["b"])], ["y"])
    c.finish("x")
    assert c.running_on("y") == ["b"]
    c.lose("x", "a")
    out = c.handle(MissingData("b", "x", "a"))
    assert freed(out, "b") == ["y"]
    assert computed_keys(out) == ["x"]
    assert c.state_of("y") == "waiting"
    c.run()
    assert c.clients["c1"].status == {"y": "memory"}


def test_missing_data_already_corrected_still_reassigns_the_asker() -> None:
    c = cluster(("a", 1), ("b", 1), ("c", 1), lossy=True)
    c.submit("c1", [spec("x", workers=["a"]), spec("y", ["x"], workers=["c"])], ["y"])
    c.finish("x")
    c.replicate("x", "b")
    c.lose("x", "a")
    c.handle(MissingData("c", "x", "a"))
    # A second report of the same problem (another fetch attempt).
    out = c.handle(MissingData("c", "x", "a"))
    assert [(type(i).__name__, i.worker) for i in out] == [("FreeKeys", "c"), ("ComputeTask", "c")]
    assert computes(out)[0].who_has == {"x": ["b"]}


def test_missing_data_about_unknown_things_changes_nothing() -> None:
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", {"x": []})
    c.finish("x")
    before = c.snapshot()
    for event in [MissingData("b", "nope", "a"), MissingData("b", "x", "ghost"), MissingData("ghost", "x", "b")]:
        assert c.handle(event) == []
        assert c.snapshot() == before


def test_missing_scattered_data_is_lost() -> None:
    c = cluster(("a", 1), ("b", 1), lossy=True)
    scatter(c, "c1", "d", ["a"])
    c.submit("c1", [spec("y", ["d"], workers=["b"])], ["y"])
    c.lose("d", "a")
    out = c.handle(MissingData("b", "d", "a"))
    assert [(i.client, i.key) for i in of_type(out, ClientKeyLost)] == [("c1", "d")]
    erred = {i.key: i for i in of_type(out, ClientKeyErred)}
    assert erred["y"].exception.kind == "lost-data"
    assert c.state_of("y") == "erred"


# ----------------------------------------------------------------------
# News that was on the way while a worker left


def test_late_replica_report_does_not_cancel_a_recompute_on_that_worker() -> None:
    # b fetched a copy of x (to run y) and is telling the scheduler so, when
    # a (the only holder the scheduler knows of) dies: x is recomputed on b.
    # The late "b holds x" must not make the scheduler free x on b, which
    # would cancel the run it just assigned there and leave x processing
    # forever on a worker that does not run it.
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"], workers=["b"])], ["x", "y"])
    c.finish("x")
    c.post(c.finished_event("y", "b"))  # ReplicasAdded(b, [x]), TaskFinished(b, y): on the way
    out = c.remove_worker("a")
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "x")]
    c.check = False  # look at the state directly
    out = c.handle_list(c.deliver())
    ts = c.state.tasks["x"]
    if ts.state_name == "processing":
        assert ts.processing_on.address == "b"
        assert "x" not in freed(out, "b"), "the scheduler cancelled its own assignment of x on b"
    else:
        assert ts.state_name == "memory"
        assert [ws.address for ws in ts.who_has] == ["b"]
        assert "x" not in freed(out, "b")


def test_late_replica_report_in_the_same_batch_as_the_removal() -> None:
    # The same in one batch: ComputeTask(b, x) then FreeKeys(b, [x]) would be
    # read by b as "run x, then forget x".
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"], workers=["b"])], ["x", "y"])
    c.finish("x")
    ra, tf = c.finished_event("y", "b")
    c.check = False
    out = c.handle(WorkerRemoved("a"), ra, tf)
    frees_after_compute = [
        i
        for n, i in enumerate(out)
        if isinstance(i, FreeKeys)
        and any(isinstance(j, ComputeTask) and j.worker == i.worker and j.key in i.keys for j in out[:n])
    ]
    assert frees_after_compute == [], out


def test_worker_replaced_in_the_same_batch_gets_each_task_once() -> None:
    # b dies, x moves to a; a restarts (registers again) in the same batch, x
    # moves to the new a.  Instructions carry only the address, so the new
    # process at a receives everything addressed to a in this batch: it must
    # not be told to compute x twice (the first with the old process's run id).
    c = cluster(("a", 1), ("b", 1))
    c.submit("c1", [spec("x", workers=["b"], allow_other_workers=True)])
    assert c.running_on("x") == ["b"]
    c.check = False
    out = c.handle(WorkerRemoved("b", expected=True), WorkerAdded("a", 1))
    to_a = [i for i in out if getattr(i, "worker", None) == "a"]
    runs = []
    for i in to_a:
        if isinstance(i, FreeKeys) and "x" in i.keys:
            runs = []
        elif isinstance(i, ComputeTask) and i.key == "x":
            runs.append(i.run_id)
    assert len(runs) == 1, to_a
    assert runs[0] == c.state.tasks["x"].run_id
    c.check = True


def test_replica_report_that_crossed_a_free_is_not_a_result() -> None:
    # b fetched a copy of x (to run y) and reports it; before the report
    # arrives, a dies and x is recomputed on b (b reports it finished at
    # once), then the client releases x and y (FreeKeys(b, [x]): b drops its
    # copy) and wants x again, computed on c.  The late "b holds x" describes
    # a copy b no longer has: it must not become x's result (nor cancel the
    # run on c).
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("c1", [spec("busy", workers=["c"])], ["busy"])  # so that x goes to b, not c
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"], workers=["b"])], ["x", "y"])
    c.finish("x")
    c.post(c.finished_event("y", "b"))  # ReplicasAdded(b, [x]), TaskFinished(b, y): on the way
    out = c.remove_worker("a")
    assert [(i.worker, i.key) for i in computes(out)] == [("b", "x")]
    c.release("c1", ["x", "y"])
    assert "x" not in c.workers["b"].data
    assert c.state_of("x") is None
    out = c.submit("c1", [spec("x", workers=["c"])], ["x"])
    assert [(i.worker, i.key) for i in computes(out)] == [("c", "x")]
    c.check = False
    out = c.handle_list(c.deliver())
    ts = c.state.tasks["x"]
    assert ts.who_has is None or "b" not in [ws.address for ws in ts.who_has], "b is taken to hold x, which it dropped"
    assert ts.state_name == "processing" and ts.processing_on.address == "c"
    assert "x" not in freed(out, "c")


def test_replica_report_that_crossed_a_free_is_not_a_replica() -> None:
    # As above, but x is back in memory (on c) when the late report arrives:
    # b must not be added as a holder of x.
    c = cluster(("a", 1), ("b", 1), ("c", 1))
    c.submit("c1", [spec("busy", workers=["c"])], ["busy"])
    c.submit("c1", [spec("x", workers=["a"], allow_other_workers=True), spec("y", ["x"], workers=["b"])], ["x", "y"])
    c.finish("x")
    c.post(c.finished_event("y", "b"))
    c.remove_worker("a")
    c.release("c1", ["x", "y"])
    c.submit("c1", [spec("x", workers=["c"])], ["x"])
    c.finish("x", "c")
    c.check = False
    c.handle_list(c.deliver())
    assert [ws.address for ws in c.state.tasks["x"].who_has] == ["c"]
    assert "x" not in [ts.key for ts in c.state.workers["b"].has_what]


def test_missing_data_report_that_crossed_a_scatter_does_not_lose_the_new_copy() -> None:
    # a lost d; b, asked to run y, reports it missing.  Before the report
    # arrives, the client scatters d to a again.  The report is about the old
    # copy: the new one must not be dropped, let alone declared lost.
    c = cluster(("a", 1), ("b", 1), lossy=True)
    scatter(c, "c1", "d", ["a"])
    c.submit("c1", [spec("y", ["d"], workers=["b"])], ["y"])
    c.lose("d", "a")
    report = c.finished_event("y", "b")
    assert [type(e).__name__ for e in report] == ["MissingData"]
    c.post(report)  # on the way
    scatter(c, "c1", "d", ["a"])
    assert c.state_of("d") == "memory"
    c.check = False
    out = c.handle_list(c.deliver())
    assert of_type(out, ClientKeyLost) == [] and of_type(out, ClientKeyErred) == []
    assert c.state_of("d") == "memory"
    assert [ws.address for ws in c.state.tasks["d"].who_has] == ["a"]
