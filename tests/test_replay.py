"""A replay rebuilds the recorded scheduler's state and decisions, and points at the batch that diverges."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import sched_core as sc
from _replay_scenarios import failure_scenario, random_scenario
from dsched._recording import MAGIC, BatchRecord, EventRecorder, RecordingError, RecordingReader, _frame
from dsched._recording_codec import decode_events, encode_events
from dsched._replay import compare_states, replay, state_snapshot


def _rewrite(source: Path, target: Path, change: Callable[[BatchRecord], BatchRecord]) -> Path:
    """Copy a recording, passing every batch through ``change``."""
    with RecordingReader(source) as reader, open(target, "wb") as out:
        out.write(MAGIC + _frame(reader.header))
        for batch in reader:
            out.write(_frame(change(batch)))
        if reader.end is not None:
            out.write(_frame(reader.end))
    return target


def test_a_run_with_worker_failures_replays_to_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "failures.rec"
    cluster = failure_scenario(path)
    live = cluster.state
    # The scenario did what it is meant to exercise.
    assert "w1" not in live.workers and live.n_recomputed > 0
    assert live.n_steals > 0 and live.n_tasks_erred > 0
    assert live.task_state("flaky") == "memory" and live.task_state("bad") == "erred"
    result = replay(path)
    assert result.ok, result.report()
    assert (result.batches, result.instructions) == (cluster.n_batches, len(cluster.history))
    assert result.end is not None and result.end.reason == "closed"
    assert compare_states(live, result.state) == []
    assert state_snapshot(result.state) == state_snapshot(live)
    snapshot = state_snapshot(result.state)
    assert snapshot["tasks"]["bad"]["state"] == "erred"
    assert sorted(snapshot["workers"]) == ["w2", "w3"]
    assert sorted(snapshot["clients"]) == ["alice"]


@pytest.mark.parametrize("seed", range(6))
def test_random_runs_replay_exactly(tmp_path: Path, seed: int) -> None:
    path = tmp_path / f"random-{seed}.rec"
    cluster = random_scenario(path, seed)
    result = replay(path, validate=True)
    assert result.ok, result.report()
    assert result.batches == cluster.n_batches
    assert compare_states(cluster.state, result.state) == []


def test_a_recording_without_payloads_replays_the_same_decisions(tmp_path: Path) -> None:
    path = tmp_path / "light.rec"
    cluster = failure_scenario(path, keep_payloads=False, keep_decisions=False)
    result = replay(path)
    assert result.ok, result.report()
    assert compare_states(cluster.state, result.state) == []


def test_tampered_decisions_are_reported_at_their_batch(tmp_path: Path) -> None:
    source = tmp_path / "run.rec"
    failure_scenario(source)

    def tamper(batch: BatchRecord) -> BatchRecord:
        if batch.number == 9:
            batch.digest = bytes(16)
        return batch

    result = replay(_rewrite(source, tmp_path / "tampered.rec", tamper))
    assert not result.ok and result.n_mismatches == 1
    [mismatch] = result.mismatches
    assert mismatch.batch == 9
    assert mismatch.first_difference is None  # same instructions in brief: details differ
    assert "differ in details" in mismatch.describe()
    assert "batch 9" in result.report() and "DECISIONS DIFFER" in result.report()


def test_a_tampered_event_is_reported_at_the_first_batch_it_changes(tmp_path: Path) -> None:
    source = tmp_path / "run.rec"
    failure_scenario(source)
    with RecordingReader(source) as reader:
        erred_at = next(b.number for b in reader if any(row[0] == "TaskErred" for row in b.events))

    def succeed_instead(batch: BatchRecord) -> BatchRecord:
        if batch.number == erred_at:
            events = decode_events(batch.events)
            changed = [
                sc.TaskFinished(e.worker, e.key, 10, 0.1, e.run_id) if isinstance(e, sc.TaskErred) else e for e in events
            ]
            batch.events = encode_events(changed)
        return batch

    result = replay(_rewrite(source, tmp_path / "tampered.rec", succeed_instead))
    assert result.n_mismatches >= 1
    first = result.mismatches[0]
    assert first.batch == erred_at
    assert first.first_difference is not None
    assert first.recorded != first.replayed
    text = first.describe()
    assert "recorded:" in text and "replayed:" in text


def test_a_mismatch_without_kept_decisions_shows_the_replayed_ones(tmp_path: Path) -> None:
    source = tmp_path / "run.rec"
    failure_scenario(source, keep_decisions=False)

    def tamper(batch: BatchRecord) -> BatchRecord:
        if batch.number == 4:
            batch.n_instructions += 1
        return batch

    result = replay(_rewrite(source, tmp_path / "tampered.rec", tamper))
    [mismatch] = result.mismatches
    assert mismatch.batch == 4 and mismatch.recorded is None
    assert "only a digest" in mismatch.describe() and "ComputeTask" in mismatch.describe()


def test_until_batch_stops_there(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    failure_scenario(path)
    result = replay(path, until_batch=4)
    assert result.batches == 4 and result.state.batch == 4
    assert result.end is None and result.ok
    assert "stopped after batch 4" in result.report()
    assert result.summary()["tasks"] == 20  # the graph came in batch 4


def test_on_batch_sees_each_batch_before_the_core_does(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    cluster = failure_scenario(path)
    seen: list[tuple[int, int, int]] = []

    def hook(record: BatchRecord, events: list[sc.SchedulerEvent], state: sc.SchedulerState) -> None:
        seen.append((record.number, len(events), state.batch))

    replay(path, on_batch=hook)
    assert [n for n, _, _ in seen] == list(range(1, cluster.n_batches + 1))
    assert all(state_batch == number - 1 for number, _, state_batch in seen)


def test_step_enters_the_debugger_before_each_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.rec"
    failure_scenario(path)
    stops: list[int] = []

    def fake_debugger(*args: object, **kwargs: object) -> None:
        frame = sys._getframe(1)  # the replay frame breakpoint() was called from
        stops.append(len(frame.f_locals["events"]))

    monkeypatch.setattr(sys, "breakpointhook", fake_debugger)
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    result = replay(path, step=True, until_batch=5)
    assert len(stops) == 5 and result.batches == 5
    assert sum(stops) == result.events


def _feed_recorded(state: sc.SchedulerState, recorder: EventRecorder, events: list[sc.SchedulerEvent]) -> None:
    """What the scheduler server does around the core."""
    try:
        out = state.handle_events(events)
    except Exception as exc:
        recorder.write_batch(events, None, exc)
        raise
    recorder.write_batch(events, out)


def test_a_batch_on_which_the_core_raised_raises_again_in_the_replay(tmp_path: Path) -> None:
    path = tmp_path / "raised.rec"
    with EventRecorder(path) as recorder:
        state = sc.SchedulerState()
        recorder.start(state)
        _feed_recorded(state, recorder, [sc.WorkerAdded("w", 1)])
        with pytest.raises(TypeError):
            # Bad input the core does not expect (a size that is not an int).
            _feed_recorded(state, recorder, [sc.KeysScattered("c", ["w"], {"x": None})])  # type: ignore[dict-item]
    result = replay(path)
    assert result.batches == 2 and not result.ok
    assert isinstance(result.exception, TypeError)
    assert result.error is not None and result.error.startswith("batch 2: the core raised TypeError")
    assert "when recorded it raised TypeError" in result.error
    assert "ERROR: batch 2" in result.report()


def test_a_batch_that_raised_when_recorded_but_not_now_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "raised.rec"
    with EventRecorder(path) as recorder:
        state = sc.SchedulerState()
        recorder.start(state)
        events: list[sc.SchedulerEvent] = [sc.WorkerAdded("w", 1)]
        state.handle_events(events)
        recorder.write_batch(events, None, RuntimeError("core bug"))  # as if handle_events had raised
    result = replay(path)
    [mismatch] = result.mismatches
    assert mismatch.batch == 1 and "raised here when recorded" in mismatch.note


def test_an_undecodable_batch_is_a_recording_error(tmp_path: Path) -> None:
    source = tmp_path / "run.rec"
    failure_scenario(source)

    def garble(batch: BatchRecord) -> BatchRecord:
        if batch.number == 2:
            batch.events = [["NoSuchEvent"]]
        return batch

    with pytest.raises(RecordingError, match="batch 2 does not decode.*NoSuchEvent"):
        replay(_rewrite(source, tmp_path / "garbled.rec", garble))


def test_validate_stops_at_a_state_that_breaks_an_invariant(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    failure_scenario(path)

    def corrupt(record: BatchRecord, events: list[sc.SchedulerEvent], state: sc.SchedulerState) -> None:
        if record.number == 6:
            state.tasks["load-7"].n_waiters += 5  # a core bug, simulated

    result = replay(path, on_batch=corrupt, validate=True)
    assert result.invalid is not None and result.invalid.startswith("after batch 6")
    assert result.batches == 6 and not result.ok


def test_summary_counts_tasks_workers_and_clients(tmp_path: Path) -> None:
    path = tmp_path / "run.rec"
    cluster = failure_scenario(path)
    summary = replay(path).summary()
    assert summary["tasks"] == len(cluster.state.tasks)
    assert summary["tasks_by_state"] == {"erred": 2, "memory": 2, "released": 16}
    assert [w["address"] for w in summary["workers"]] == list(cluster.state.workers)
    assert summary["clients"] == ["alice"]
    assert summary["core"] == ("compiled" if sc.COMPILED else "interpreted")
    assert summary["ok"] is True and summary["mismatches"] == 0
