"""Unit tests of the worker-side task state machine, transition by transition."""

from __future__ import annotations

import pytest

from sched_core._worker import STATE_NAMES, Transfer, WorkerMachine, WorkerTask
from sched_core._worker_events import (
    AddReplicaMsg,
    ComputeTaskEvent,
    DataPutEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepMissingEvent,
    GatherDepSuccessEvent,
    MissingDep,
    PauseEvent,
    ReleaseData,
    RemoveReplicasEvent,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    StealRequestEvent,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    UnpauseEvent,
    UpdateWhoHasEvent,
    WorkerEvent,
    WorkerMachineInstruction,
)


def compute(
    key: str,
    priority: int = 0,
    who_has: dict[str, list[str]] | None = None,
    nbytes: dict[str, int] | None = None,
    resources: dict[str, float] | None = None,
) -> ComputeTaskEvent:
    return ComputeTaskEvent(
        key, f"spec-{key}", priority, who_has or {}, nbytes or {}, resources
    )


def ok(key: str, nbytes: int = 10) -> ExecuteSuccessEvent:
    return ExecuteSuccessEvent(key, nbytes, 1.0, 2.0)


def fail(key: str) -> ExecuteFailureEvent:
    return ExecuteFailureEvent(key, "exc", "tb", 1.0, 2.0)


class M:
    """Test harness: a machine that validates after every batch."""

    def __init__(self, **kwargs: object) -> None:
        self.m = WorkerMachine("me", **kwargs)  # type: ignore[arg-type]

    def __call__(self, *events: WorkerEvent) -> list[WorkerMachineInstruction]:
        out = self.m.handle_events(list(events))
        self.m.validate()
        return out

    def state(self, key: str) -> str | None:
        return self.m.state_of(key)


def execs(out: list[WorkerMachineInstruction]) -> list[str]:
    return [i.key for i in out if isinstance(i, Execute)]


def gathers(out: list[WorkerMachineInstruction]) -> list[GatherDep]:
    return [i for i in out if isinstance(i, GatherDep)]


# ---------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------


def test_compute_no_deps_executes() -> None:
    m = M()
    assert m(compute("a")) == [Execute("a", "spec-a")]
    assert m.state("a") == "executing"


def test_success_reports_and_next_ready_executes() -> None:
    m = M()
    assert execs(m(compute("a", 1), compute("b", 2))) == ["a"]
    assert m.state("b") == "ready"
    out = m(ok("a", 7))
    assert out == [TaskFinishedMsg("a", 7, 1.0, 2.0), Execute("b", "spec-b")]
    assert m.state("a") == "memory"
    assert m.m.nbytes_in_memory == 7
    assert m.m.n_executed == 1


def test_nthreads_limit() -> None:
    m = M(nthreads=2)
    out = m(*(compute(k, i) for i, k in enumerate("abcde")))
    assert execs(out) == ["a", "b"]
    assert len(m.m.running) == 2
    assert execs(m(ok("b"))) == ["c"]
    assert execs(m(ok("a"), ok("c"))) == ["d", "e"]
    assert execs(m(ok("d"), ok("e"))) == []


def test_priority_order() -> None:
    m = M()
    out = m(compute("x", 5), compute("y", 3), compute("z", 4), compute("w", 1))
    assert execs(out) == ["w"]
    order = []
    for _ in range(3):
        running = list(m.m.running)
        assert len(running) == 1
        order.extend(execs(m(ok(running[0]))))
    assert order == ["y", "z", "x"]


def test_negative_and_huge_priorities() -> None:
    m = M()
    prios = {"a": 0, "b": 2**70, "c": -(2**65), "d": -1, "e": 2**40 + 3, "f": 5}
    out = m(compute("first", -(2**80)), *(compute(k, p) for k, p in prios.items()))
    assert execs(out) == ["first"]
    order = []
    running = "first"
    for _ in range(len(prios)):
        got = execs(m(ok(running)))
        order.extend(got)
        running = got[0]
    assert order == sorted(prios, key=prios.__getitem__)


def test_failure_reports_erred_and_continues() -> None:
    m = M()
    m(compute("a", 1), compute("b", 2))
    out = m(fail("a"))
    assert out == [TaskErredMsg("a", "exc", "tb", 1.0, 2.0), Execute("b", "spec-b")]
    assert m.state("a") == "error"
    assert m.m.n_failed == 1
    # kept until the scheduler frees it
    assert m(FreeKeysEvent(["a"])) == []
    assert m.state("a") is None


def test_retry_after_error() -> None:
    m = M()
    m(compute("a"))
    m(fail("a"))
    assert execs(m(compute("a"))) == ["a"]
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]


def test_local_dependency_chain() -> None:
    m = M(nthreads=2)
    out = m(compute("a", 1), compute("b", 2, {"a": []}))
    assert execs(out) == ["a"]
    assert m.state("b") == "waiting"
    out = m(ok("a"))
    assert out == [TaskFinishedMsg("a", 10, 1.0, 2.0), Execute("b", "spec-b")]


def test_deps_in_local_memory_need_no_fetch() -> None:
    m = M()
    m(compute("a"))
    m(ok("a"))
    # the scheduler lists this worker (and another) as holders
    out = m(compute("b", 1, {"a": ["me", "p1"]}))
    assert out == [Execute("b", "spec-b")]


def test_compute_on_memory_reports_again() -> None:
    m = M()
    m(compute("a"))
    m(ok("a", 3))
    assert m(compute("a")) == [TaskFinishedMsg("a", 3, 0.0, 0.0)]


def test_duplicate_compute_is_ignored() -> None:
    m = M()
    m(compute("a"), compute("b"))
    assert m(compute("a"), compute("b")) == []
    assert m(ok("a"), ok("a")) == [
        TaskFinishedMsg("a", 10, 1.0, 2.0),
        Execute("b", "spec-b"),
    ]


def test_resources() -> None:
    m = M(nthreads=4, resources={"GPU": 1.0})
    out = m(
        compute("g1", 1, resources={"GPU": 1.0}),
        compute("g2", 2, resources={"GPU": 1.0}),
        compute("c", 3),
        compute("t", 4, resources={"TPU": 1.0}),
    )
    assert execs(out) == ["g1", "c"]
    assert m.m.available_resources == {"GPU": 0.0}
    assert execs(m(ok("g1"))) == ["g2"]
    assert execs(m(ok("g2"))) == []
    assert m.m.available_resources == {"GPU": 1.0}
    assert m.state("t") == "ready"  # never fits here; the scheduler's concern


# ---------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------


def test_free_while_executing_cancels_and_drops_result() -> None:
    m = M()
    m(compute("a", 1), compute("b", 2))
    assert m(FreeKeysEvent(["a"])) == []
    assert m.state("a") == "cancelled"
    assert len(m.m.running) == 1  # still occupies its thread
    out = m(ok("a"))
    assert out == [ReleaseData("a"), Execute("b", "spec-b")]
    assert m.state("a") is None


def test_cancelled_failure_not_reported() -> None:
    m = M()
    m(compute("a"))
    m(FreeKeysEvent(["a"]))
    assert m(fail("a")) == []
    assert m.m.tasks == {}


def test_recompute_while_cancelled_reports() -> None:
    m = M()
    m(compute("a"))
    m(FreeKeysEvent(["a"]))
    assert m(compute("a")) == []  # already running: no second Execute
    assert m.state("a") == "executing"
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]


def test_free_ready_and_waiting() -> None:
    m = M()
    m(compute("a", 1), compute("b", 2), compute("c", 3, {"x": ["p1"]}))
    assert m(FreeKeysEvent(["b", "c"])) == []
    assert m.state("b") is None and m.state("c") is None
    assert m.state("x") is None  # no longer needed (its transfer is in flight)
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]
    # the stale transfer answers: its data is dropped
    assert m(GatherDepSuccessEvent("p1", {"x": 5})) == [ReleaseData("x")]
    assert m.m.in_flight == {}


def test_free_chain_in_any_order_releases_everything() -> None:
    for order in (["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]):
        m = M()
        m(compute("a", 1), compute("b", 2, {"a": []}), compute("c", 3, {"b": []}))
        out = m(FreeKeysEvent(order))
        assert not any(isinstance(i, MissingDep) for i in out), out
        assert m.state("a") == "cancelled"
        assert m.state("b") is None and m.state("c") is None
        assert m(ok("a")) == [ReleaseData("a")]
        assert m.m.tasks == {}


def test_free_dependency_still_needed_locally() -> None:
    # The scheduler frees a waiting task that a task it still wants depends on:
    # the task is no longer computed here; its data is reported missing.
    m = M()
    m(compute("a", 1), compute("b", 2), compute("c", 3, {"b": []}))
    out = m(FreeKeysEvent(["b"]))
    assert out == [MissingDep("b", "")]
    assert m.state("b") == "missing"
    out = m(UpdateWhoHasEvent({"b": ["p1"]}))
    assert out == [GatherDep("p1", ["b"], 1024)]
    out = m(GatherDepSuccessEvent("p1", {"b": 4}))
    assert out == [AddReplicaMsg("b", 4)]
    assert m.state("c") == "ready"


def test_cancelled_result_kept_for_local_dependent() -> None:
    m = M(nthreads=2)
    m(compute("a", 1), compute("b", 2, {"a": []}))
    # b is waiting on a; a's compute is freed while running, b is not
    m(FreeKeysEvent(["a"]))
    assert m.state("a") == "cancelled"
    out = m(ok("a", 5))
    assert out == [Execute("b", "spec-b")]  # a not reported, but used
    assert m.state("a") == "memory"
    out = m(ok("b"))
    assert out == [TaskFinishedMsg("b", 10, 1.0, 2.0), ReleaseData("a")]
    assert set(m.m.tasks) == {"b"}


# ---------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------


def test_remote_deps_grouped_per_peer() -> None:
    m = M()
    out = m(
        compute(
            "z",
            1,
            {"x1": ["p1"], "x2": ["p1"], "y": ["p2"], "w": ["p1", "p2"]},
            {"x1": 100, "x2": 200, "y": 300, "w": 50},
        )
    )
    g = gathers(out)
    assert len(g) == 2
    by_peer = {i.peer: i for i in g}
    assert set(by_peer) == {"p1", "p2"}
    # w goes to one peer only
    all_keys = sorted(k for i in g for k in i.keys)
    assert all_keys == ["w", "x1", "x2", "y"]
    assert sum(i.total_nbytes for i in g) == 650
    assert m.m.bytes_in_flight == 650
    assert m.state("z") == "waiting"
    assert execs(out) == []
    out = m(GatherDepSuccessEvent("p1", {k: 1 for k in by_peer["p1"].keys}))
    assert execs(out) == []
    out = m(GatherDepSuccessEvent("p2", {k: 1 for k in by_peer["p2"].keys}))
    assert execs(out) == ["z"]
    assert m.m.n_fetched == 4 and m.m.n_transfers == 2
    assert m.m.bytes_in_flight == 0


def test_fetch_priority_and_byte_limit() -> None:
    m = M(transfer_message_bytes=250)
    out = m(
        compute("c", 3, {"k3": ["p1"]}, {"k3": 100}),
        compute("a", 1, {"k1": ["p1"]}, {"k1": 100}),
        compute("b", 2, {"k2": ["p1"]}, {"k2": 100}),
    )
    # highest priority first, cut at the byte limit, one request per peer
    assert gathers(out) == [GatherDep("p1", ["k1", "k2"], 200)]
    out = m(GatherDepSuccessEvent("p1", {"k1": 100, "k2": 100}))
    assert GatherDep("p1", ["k3"], 100) in out
    assert execs(out) == ["a"]


def test_large_key_alone_exceeds_limit() -> None:
    m = M(transfer_message_bytes=10)
    out = m(compute("a", 1, {"big": ["p1"]}, {"big": 1000}))
    assert gathers(out) == [GatherDep("p1", ["big"], 1000)]


def test_transfer_peers_limit_and_busy_peer_avoided() -> None:
    m = M(transfer_peers=2)
    out = m(
        compute("a", 1, {"x": ["p1"]}),
        compute("b", 2, {"y": ["p2"]}),
        compute("c", 3, {"z": ["p3"]}),
    )
    assert [g.peer for g in gathers(out)] == ["p1", "p2"]
    out = m(GatherDepSuccessEvent("p1", {"x": 1}))
    assert [g.peer for g in gathers(out)] == ["p3"]


def test_prefers_peer_not_in_flight() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1"]}))
    out = m(compute("b", 2, {"y": ["p1", "p2"]}))
    assert gathers(out) == [GatherDep("p2", ["y"], 1024)]


def test_gather_failure_moves_to_other_peer_then_missing() -> None:
    m = M()
    out = m(compute("a", 1, {"x": ["p1", "p2"]}))
    assert gathers(out) == [GatherDep("p1", ["x"], 1024)]
    out = m(GatherDepFailureEvent("p1", ["x"]))
    assert out == [GatherDep("p2", ["x"], 1024)]
    out = m(GatherDepFailureEvent("p2", ["x"]))
    assert out == [MissingDep("x", "")]
    assert m.state("x") == "missing"
    assert m.m.has_what == {}
    out = m(UpdateWhoHasEvent({"x": ["p3"]}))
    assert out == [GatherDep("p3", ["x"], 1024)]
    out = m(GatherDepSuccessEvent("p3", {"x": 8}))
    assert out == [AddReplicaMsg("x", 8), Execute("a", "spec-a")]


def test_gather_failure_forgets_peer_everywhere() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1"]}))
    # y and z wait for p1 (in flight); z has another holder, y does not
    out = m(compute("b", 2, {"y": ["p1"], "z": ["p1", "p2"]}))
    assert gathers(out) == [GatherDep("p2", ["z"], 1024)]
    out = m(GatherDepFailureEvent("p1", ["x"]))
    assert out == [MissingDep("y", ""), MissingDep("x", "")]
    assert "p1" not in m.m.has_what


def test_gather_missing_reports_errant_worker() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1", "p2"], "y": ["p1"]}))
    out = m(GatherDepMissingEvent("p1", ["x", "y"]))
    assert out == [
        MissingDep("x", "p1"),
        MissingDep("y", "p1"),
        GatherDep("p2", ["x"], 1024),
    ]
    assert m.state("y") == "missing"


def test_gather_success_with_lacking_keys() -> None:
    m = M()
    out = m(compute("a", 1, {"x": ["p1"], "y": ["p1", "p2"]}))
    assert gathers(out) == [GatherDep("p1", ["x", "y"], 2048)]
    out = m(GatherDepSuccessEvent("p1", {"x": 3}))
    assert out == [
        AddReplicaMsg("x", 3),
        MissingDep("y", "p1"),
        GatherDep("p2", ["y"], 1024),
    ]


def test_busy_peer_retried_elsewhere_then_later() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1", "p2"], "y": ["p1"]}))
    assert m.m.in_flight["p1"].keys == ["x", "y"]
    out = m(GatherDepBusyEvent("p1", ["x", "y"]))
    assert out == [RetryBusyWorkerLater("p1"), GatherDep("p2", ["x"], 1024)]
    assert m.state("y") == "fetch"  # waits for p1
    assert m(RetryBusyWorkerEvent("p1")) == [GatherDep("p1", ["y"], 1024)]


def test_update_who_has_replaces_holders() -> None:
    m = M(transfer_peers=1)
    m(compute("a", 1, {"x": ["p1"]}))
    m(compute("b", 2, {"y": ["p1", "p2"]}))
    assert m.state("y") == "fetch"
    assert m(UpdateWhoHasEvent({"y": ["p3"], "unknown": ["p1"], "a": ["p9"]})) == []
    assert m.m.tasks["y"].who_has == ["p3"]
    out = m(GatherDepSuccessEvent("p1", {"x": 1}))
    assert GatherDep("p3", ["y"], 1024) in out
    # an empty list makes a fetch task missing (reported once)
    m2 = M(transfer_peers=1)
    m2(compute("a", 1, {"x": ["p1"]}))
    m2(compute("b", 2, {"y": ["p2"]}))
    assert m2(UpdateWhoHasEvent({"y": []})) == [MissingDep("y", "")]
    assert m2.state("y") == "missing"
    assert m2(UpdateWhoHasEvent({"y": []})) == []  # no ping-pong


def test_dependency_shared_by_two_tasks_fetched_once() -> None:
    m = M(nthreads=2)
    out = m(compute("a", 1, {"x": ["p1"]}), compute("b", 2, {"x": ["p1"]}))
    assert gathers(out) == [GatherDep("p1", ["x"], 1024)]
    out = m(GatherDepSuccessEvent("p1", {"x": 1}))
    assert execs(out) == ["a", "b"]


def test_missing_dep_without_holders() -> None:
    m = M()
    out = m(compute("a", 1, {"x": []}))
    assert out == [MissingDep("x", "")]
    out = m(FreeKeysEvent(["a"]))
    assert m.m.tasks == {}


def test_memory_kept_until_scheduler_frees_it() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1"]}))
    m(GatherDepSuccessEvent("p1", {"x": 5}))
    m(ok("a"))
    assert m.state("x") == "memory"  # the scheduler knows it is here
    assert m(FreeKeysEvent(["x"])) == [ReleaseData("x")]
    assert m(RemoveReplicasEvent(["a"])) == [ReleaseData("a")]
    assert m.m.tasks == {} and m.m.nbytes_in_memory == 0


def test_free_dependency_while_dependent_runs() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1"]}))
    m(GatherDepSuccessEvent("p1", {"x": 5}))
    assert m(FreeKeysEvent(["x"])) == []  # a still needs it
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0), ReleaseData("x")]


def test_keep_fetched_false() -> None:
    m = M(keep_fetched=False)
    m(compute("a", 1, {"x": ["p1"]}))
    assert m(GatherDepSuccessEvent("p1", {"x": 5})) == [Execute("a", "spec-a")]
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0), ReleaseData("x")]


def test_compute_requested_while_in_flight() -> None:
    m = M(nthreads=2)
    m(compute("a", 1, {"x": ["p1"]}))
    assert m(compute("x", 0)) == []
    assert m.state("x") == "flight"
    out = m(GatherDepSuccessEvent("p1", {"x": 5}))
    assert out == [TaskFinishedMsg("x", 5, 0.0, 0.0), Execute("a", "spec-a")]
    # and if the transfer fails, x is computed here
    m = M(nthreads=2)
    m(compute("a", 1, {"x": ["p1"]}))
    m(compute("x", 0))
    out = m(GatherDepFailureEvent("p1", ["x"]))
    assert out == [Execute("x", "spec-x")]
    out = m(ok("x"))
    assert out == [TaskFinishedMsg("x", 10, 1.0, 2.0), Execute("a", "spec-a")]


def test_compute_requested_for_fetch_task() -> None:
    m = M(transfer_peers=1)
    m(compute("a", 1, {"x": ["p1"]}))
    m(compute("b", 2, {"y": ["p2"]}))
    assert m.state("y") == "fetch"
    assert execs(m(compute("y", 0))) == ["y"]
    assert m.m.n_fetch == 0


def test_data_arrives_for_unwanted_or_running_keys() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1"]}))
    m(FreeKeysEvent(["a"]))  # x released while in flight
    m(compute("x", 0))  # x now computed here, executing
    out = m(GatherDepSuccessEvent("p1", {"x": 5, "zzz": 1}))
    assert out == [ReleaseData("zzz")]
    assert m.m.stray == {"x"}
    # x's own result overwrites the stray value
    assert m(ok("x")) == [TaskFinishedMsg("x", 10, 1.0, 2.0)]
    assert m.m.stray == set()


# ---------------------------------------------------------------------------
# Stealing, pausing, odd events
# ---------------------------------------------------------------------------


def test_steal_request() -> None:
    m = M()
    m(compute("a", 1), compute("b", 2), compute("c", 3, {"x": ["p1"]}))
    assert m(StealRequestEvent("a")) == [StealResponseMsg("a", "executing")]
    assert m.state("a") == "executing"
    assert m(StealRequestEvent("b")) == [StealResponseMsg("b", "ready")]
    assert m.state("b") is None
    assert m(StealRequestEvent("c")) == [StealResponseMsg("c", "waiting")]
    assert m.state("c") is None and m.state("x") is None
    assert m(StealRequestEvent("nope")) == [StealResponseMsg("nope", None)]
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]


def test_pause_blocks_execute_and_fetch() -> None:
    m = M(nthreads=2)
    m(compute("a", 1))
    m(PauseEvent())
    out = m(compute("b", 2), compute("c", 3, {"x": ["p1"]}))
    assert out == []
    assert m(ok("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]
    out = m(UnpauseEvent())
    assert out == [Execute("b", "spec-b"), GatherDep("p1", ["x"], 1024)]


def test_odd_events_are_ignored() -> None:
    m = M()
    assert m(FreeKeysEvent(["nope"])) == []
    assert m(RemoveReplicasEvent(["nope"])) == []
    assert m(ok("nope"), fail("nope")) == []
    assert m(GatherDepSuccessEvent("p9", {})) == []
    assert m(GatherDepMissingEvent("p9", ["nope"])) == []
    assert m(GatherDepFailureEvent("p9", ["nope"])) == []
    assert m(GatherDepBusyEvent("p9", ["nope"])) == []
    assert m(RetryBusyWorkerEvent("p9")) == []
    assert m(UpdateWhoHasEvent({"nope": ["p1"]})) == []
    m(compute("a"))
    m(ok("a"))
    assert m(ok("a")) == []  # duplicate completion
    assert m(GatherDepSuccessEvent("p1", {"a": 3})) == []  # already in memory
    assert m.m.nbytes_in_memory == 10
    with pytest.raises(TypeError):
        m(WorkerEvent())


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        WorkerMachine("me", nthreads=0)
    with pytest.raises(ValueError):
        WorkerMachine("me", transfer_peers=0)


def test_reprs() -> None:
    m = M()
    m(compute("a", 1, {"x": ["p1"]}))
    assert "WorkerMachine" in repr(m.m) and "'me'" in repr(m.m)
    assert "flight" in repr(m.m.tasks["x"])
    assert isinstance(m.m.tasks["x"], WorkerTask)
    assert "p1" in repr(m.m.in_flight["p1"])
    assert isinstance(m.m.in_flight["p1"], Transfer)
    objs: list[object] = [
        compute("a", resources={"GPU": 1.0}),
        FreeKeysEvent(["a"]),
        RemoveReplicasEvent(["a"]),
        ok("a"),
        fail("a"),
        GatherDepSuccessEvent("p", {"a": 1}),
        GatherDepMissingEvent("p", ["a"]),
        GatherDepFailureEvent("p", ["a"]),
        GatherDepBusyEvent("p", ["a"]),
        RetryBusyWorkerEvent("p"),
        StealRequestEvent("a"),
        UpdateWhoHasEvent({"a": ["p"]}),
        PauseEvent(),
        UnpauseEvent(),
        Execute("a", None),
        GatherDep("p", ["a"], 1),
        RetryBusyWorkerLater("p"),
        ReleaseData("a"),
        TaskFinishedMsg("a", 1, 0.0, 1.0),
        TaskErredMsg("a", "e", "t", 0.0, 1.0),
        AddReplicaMsg("a", 1),
        StealResponseMsg("a", "ready"),
        MissingDep("a", "p"),
    ]
    for o in objs:
        r = repr(o)
        assert r.startswith(type(o).__name__ + "("), r
    assert STATE_NAMES[m.m.tasks["a"].state] == m.m.tasks["a"].state_name
    assert Execute("a", 1) != ReleaseData("a")


# -- data put here by a peer (scatter) ---------------------------------------------


def test_data_put_is_held_in_memory_and_feeds_dependents() -> None:
    m = M()
    assert m(DataPutEvent({"s": 40})) == []
    assert m.state("s") == "memory" and m.m.nbytes_in_memory == 40
    # A task depending on it runs without a fetch (its holder list names this worker).
    assert m(compute("t", 1, {"s": [m.m.address]})) == [Execute("t", "spec-t")]
    m(ok("t"))
    assert m.state("s") == "memory"  # still held after its dependent finished
    assert m(FreeKeysEvent(["s"])) == [ReleaseData("s")]
    assert m.state("s") is None


def test_data_put_ends_a_fetch_and_a_missing_dependency() -> None:
    m = M(transfer_peers=1)
    m(compute("t", 1, {"x": ["p1"], "y": ["p1"], "z": []}))
    assert m.state("z") == "missing"
    out = m(DataPutEvent({"z": 7}))
    assert out == [] and m.state("z") == "memory"
    assert m.m.tasks["t"].waiting_count == 2  # x and y still coming


def test_data_put_does_not_disturb_a_running_task() -> None:
    m = M()
    m(compute("a", 1))
    assert m(DataPutEvent({"a": 3})) == []
    assert m.state("a") == "executing"
    assert m(ok("a", 9)) == [TaskFinishedMsg("a", 9, 1.0, 2.0)]
