"""Recordings started in the middle of a run: a snapshot of the core's state, then the batches.

The snapshot loads into the interpreted core (where ``dsched replay`` runs by
default); in a compiled test run the in-process replay must refuse it with a
message that says so, and ``dsched replay`` (which re-runs itself
interpreted) must replay it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sched_core as sc
from _replay_scenarios import random_scenario
from dsched._recording import MAGIC, EventRecorder, RecordingError, RecordingReader, _frame
from dsched._replay import ReplayResult, compare_states, replay, state_snapshot


def _replay_in_a_child(path: Path, *options: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "DSCHED_CORE"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-m", "dsched", "replay", "--json", str(path), *options],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


@pytest.mark.parametrize("seed", range(4))
def test_a_recording_started_mid_run_replays_to_the_same_state(tmp_path: Path, seed: int) -> None:
    path = tmp_path / f"mid-{seed}.rec"
    cluster = random_scenario(path, seed, start_at=8)
    with RecordingReader(path) as reader:
        first = reader.header.first_batch
        assert first > 0 and reader.snapshot is not None and reader.snapshot.batch == first
        numbers = [batch.number for batch in reader]
    assert numbers == list(range(first + 1, cluster.state.batch + 1))
    if sc.COMPILED:
        with pytest.raises(RecordingError, match="interpreted core"):
            replay(path)
        return
    result = replay(path)
    assert result.ok, result.report()
    assert result.batches == cluster.state.batch - first
    assert compare_states(cluster.state, result.state) == []
    assert state_snapshot(result.state) == state_snapshot(cluster.state)
    assert f"started mid-run: from a snapshot of the state after batch {first}" in result.report()


def test_dsched_replay_replays_a_mid_run_recording_of_either_core(tmp_path: Path) -> None:
    path = tmp_path / "mid.rec"
    cluster = random_scenario(path, 11, start_at=5)
    summary = _replay_in_a_child(path)
    assert summary["ok"] is True and summary["core"] == "interpreted"
    with RecordingReader(path) as reader:
        expected = ReplayResult(str(path), reader.header, cluster.state).summary()
    for field in ("tasks", "tasks_by_state", "workers", "clients"):
        assert summary[field] == expected[field], field


def test_until_batch_counts_from_the_first_recorded_batch(tmp_path: Path) -> None:
    path = tmp_path / "mid.rec"
    random_scenario(path, 3, start_at=6)
    with RecordingReader(path) as reader:
        first = reader.header.first_batch
    summary = _replay_in_a_child(path, "--until-batch", str(first + 2))
    assert summary["batches"] == 2 and summary["ok"] is True


def test_a_mid_run_recording_keeps_payloads_and_fits_its_snapshot(tmp_path: Path) -> None:
    state = sc.SchedulerState()
    state.handle_events([sc.WorkerAdded("w", 1), sc.ClientAdded("c")])
    state.handle_events([sc.GraphSubmitted("c", [sc.TaskSpec(f"t-{i}", [], os.urandom(100)) for i in range(200)],
                                                 [f"t-{i}" for i in range(200)])])
    with pytest.raises(ValueError, match="keeps payloads"):
        EventRecorder(tmp_path / "a.rec", keep_payloads=False).start(state)
    with pytest.raises(ValueError, match="snapshot"):
        EventRecorder(tmp_path / "b.rec", max_bytes=4096).start(state)
    assert not (tmp_path / "a.rec").exists() and not (tmp_path / "b.rec").exists()
    recorder = EventRecorder(tmp_path / "c.rec")
    recorder.start(state)
    state.handle_events([sc.ClientRemoved("c")])
    recorder.write_batch([sc.ClientRemoved("c")], [])
    recorder.close()
    assert recorder.batches == 1


def test_a_header_announcing_a_snapshot_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    source, target = tmp_path / "mid.rec", tmp_path / "cut.rec"
    random_scenario(source, 2, start_at=4)
    with RecordingReader(source) as reader, open(target, "wb") as out:
        out.write(MAGIC + _frame(reader.header))  # the snapshot left out
        for batch in reader:
            out.write(_frame(batch))
    with pytest.raises(RecordingError, match="snapshot"):
        RecordingReader(target)
