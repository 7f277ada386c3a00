"""Unit tests of the worker machine while paused (memory pressure).

A paused machine starts nothing - no ``Execute``, no ``GatherDep`` - but keeps
applying everything else: running tasks finish and are reported, open
transfers land, steal requests give tasks up (so the scheduler can move them to
a running worker), frees drop data.  ``UnpauseEvent`` starts what is ready, in
priority order, at the end of its batch.  The machine is validated after every
batch (a paused machine may leave threads idle with tasks ready).
"""

from __future__ import annotations

from sched_core._worker import WorkerMachine
from sched_core._worker_events import (
    ComputeTaskEvent,
    DataPutEvent,
    Execute,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepSuccessEvent,
    PauseEvent,
    ReleaseData,
    StealRequestEvent,
    StealResponseMsg,
    TaskFinishedMsg,
    UnpauseEvent,
    WorkerEvent,
    WorkerMachineInstruction,
)


class Machine:
    """A machine validated after every batch."""

    def __init__(self, nthreads: int = 1) -> None:
        self.m = WorkerMachine("me", nthreads)

    def __call__(self, *events: WorkerEvent) -> list[WorkerMachineInstruction]:
        out = self.m.handle_events(list(events))
        self.m.validate()
        return out


def compute(key: str, priority: int = 0, who_has: dict[str, list[str]] | None = None) -> ComputeTaskEvent:
    deps = who_has or {}
    return ComputeTaskEvent(key, f"spec-{key}", priority, deps, {k: 100 for k in deps}, None)


def done(key: str, nbytes: int = 10) -> ExecuteSuccessEvent:
    return ExecuteSuccessEvent(key, nbytes, 1.0, 2.0)


def executed(out: list[WorkerMachineInstruction]) -> list[str]:
    return [ins.key for ins in out if isinstance(ins, Execute)]


def test_running_tasks_finish_and_report_while_nothing_new_starts() -> None:
    m = Machine(nthreads=2)
    assert executed(m(compute("a", 1), compute("b", 2))) == ["a", "b"]
    assert m(PauseEvent()) == []
    assert m.m.paused
    assert m(compute("c", 3), compute("d", 4), compute("e", 5)) == []
    # Completions free slots, but a paused machine leaves them free.
    assert m(done("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]
    assert m(done("b")) == [TaskFinishedMsg("b", 10, 1.0, 2.0)]
    assert m.m.running == {} and m.m.n_ready == 3
    assert m.m.nbytes_in_memory == 20
    # Resuming starts the best-priority ready tasks, as many as there are slots.
    assert executed(m(UnpauseEvent())) == ["c", "d"]
    assert executed(m(done("c"))) == ["e"]


def test_pause_and_unpause_in_one_batch_starts_at_the_end_of_the_batch() -> None:
    m = Machine()
    m(PauseEvent())
    assert m(compute("a"), UnpauseEvent()) == [Execute("a", "spec-a")]
    m(done("a"))
    assert m(UnpauseEvent(), compute("b"), PauseEvent()) == []  # paused again when the batch ends
    assert m.m.state_of("b") == "ready"


def test_open_transfers_land_while_paused_but_no_new_one_starts() -> None:
    m = Machine()
    out = m(compute("t", 0, {"x": ["p1"]}))
    assert out == [GatherDep("p1", ["x"], 100)]
    m(PauseEvent())
    assert m(compute("u", 1, {"y": ["p2"]})) == []  # no GatherDep while paused
    assert m.m.state_of("y") == "fetch"
    out = m(GatherDepSuccessEvent("p1", {"x": 100}))
    assert executed(out) == [] and m.m.state_of("x") == "memory"
    assert m.m.state_of("t") == "ready"
    out = m(UnpauseEvent())
    assert executed(out) == ["t"]
    assert GatherDep("p2", ["y"], 100) in out


def test_a_paused_machine_gives_up_tasks_it_has_not_started() -> None:
    m = Machine()
    m(compute("a", 1))
    m(PauseEvent())
    m(compute("b", 2), compute("c", 3, {"x": ["p1"]}))
    out = m(StealRequestEvent("a"), StealRequestEvent("b"), StealRequestEvent("c"))
    assert out == [
        StealResponseMsg("a", "executing"),  # running: it stays and reports
        StealResponseMsg("b", "ready"),
        StealResponseMsg("c", "waiting"),
    ]
    assert m.m.state_of("b") is None and m.m.state_of("c") is None and m.m.state_of("x") is None
    assert m(done("a")) == [TaskFinishedMsg("a", 10, 1.0, 2.0)]
    assert m(UnpauseEvent()) == []


def test_frees_and_puts_are_applied_while_paused() -> None:
    m = Machine()
    m(compute("a"))
    m(done("a", nbytes=50))
    m(PauseEvent())
    assert m(DataPutEvent({"s": 7})) == []
    assert m.m.nbytes_in_memory == 57
    assert m(FreeKeysEvent(["a", "s"])) == [ReleaseData("a"), ReleaseData("s")]
    assert m.m.nbytes_in_memory == 0
    m(compute("b"))
    assert m.m.state_of("b") == "ready"
    m(FreeKeysEvent(["b"]))
    assert m.m.state_of("b") is None
    assert m(UnpauseEvent()) == []


def test_pausing_twice_is_the_same_as_once() -> None:
    m = Machine()
    m(PauseEvent())
    m(PauseEvent())
    m(compute("a"))
    assert executed(m(UnpauseEvent())) == ["a"]
    assert m(UnpauseEvent()) == []
