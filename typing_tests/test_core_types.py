"""Static checks of sched_core's public API (run by mypy, never executed).

Each ``assert_type`` pins what a caller sees; the ``type: ignore`` lines pin what
the API refuses, and ``--warn-unused-ignores`` fails if a refusal stops being one.
"""

from typing import assert_type

import sched_core as sc


def scheduler_side() -> None:
    state = sc.SchedulerState(allowed_failures=1, max_queue_depth=8, bandwidth=1e9)
    spec = sc.TaskSpec("inc-1", [], b"payload", priority=1, retries=2, workers=["w1"], resources={"GPU": 1.0})
    events: list[sc.SchedulerEvent] = [
        sc.WorkerAdded("w1", 2, memory_limit=2**30, resources={"GPU": 1.0}, name="first"),
        sc.GraphSubmitted("c1", [spec], ["inc-1"]),
        sc.TaskFinished("w1", "inc-1", 28, 0.001, run_id=1),
        sc.TaskErred("w1", "inc-1", b"exc", b"tb", run_id=1),
        sc.WorkerHeartbeat("w1", latency=0.002, memory=100),
        sc.StealResponse("w1", "inc-1", None),
        sc.Tick(),
    ]
    out = state.handle_events(events)
    assert_type(out, list[sc.Instruction])
    for instruction in out:
        if isinstance(instruction, sc.ComputeTask):
            assert_type(instruction.run_spec, object)
            assert_type(instruction.who_has, dict[str, list[str]])
            assert_type(instruction.run_id, int)
        elif isinstance(instruction, sc.ClientKeyErred):
            assert_type(instruction.exception, object)
            assert_type(instruction.blamed_key, str)
        elif isinstance(instruction, sc.ClientError):
            assert_type(instruction.kind, str)
        elif isinstance(instruction, sc.WorkerInstruction):
            assert_type(instruction.worker, str)
        elif isinstance(instruction, sc.ClientInstruction):
            assert_type(instruction.client, str)
    assert_type(state.task_state("inc-1"), str | None)
    assert_type(state.tasks, dict[str, sc.TaskState])
    assert_type(state.counts.get(0), int)
    assert_type(sc.state_name(0), str)
    assert_type(sc.key_split("inc-1"), str)
    assert_type(sc.validate_state(state), None)

    state.handle_events([spec])  # type: ignore[list-item]
    sc.TaskSpec("k", ["a"], b"", priority=1.5)  # type: ignore[arg-type]


def worker_side() -> None:
    machine = sc.WorkerMachine("w1", nthreads=2)
    events: list[sc.WorkerEvent] = [
        sc.ComputeTaskEvent("y", b"payload", 1, {"x": ["w2"]}, {"x": 8}),
        sc.GatherDepSuccessEvent("w2", {"x": 8}),
        sc.ExecuteSuccessEvent("y", 8, 0.0, 0.001),
        sc.FreeKeysEvent(["y"]),
    ]
    out = machine.handle_events(events)
    assert_type(out, list[sc.WorkerMachineInstruction])
    for instruction in out:
        if isinstance(instruction, sc.Execute):
            assert_type(instruction.key, str)
        elif isinstance(instruction, sc.GatherDep):
            assert_type(instruction.keys, list[str])
    assert_type(machine.state_of("y"), str | None)

    machine.handle_events([sc.Tick()])  # type: ignore[list-item]
