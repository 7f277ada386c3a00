"""``dsched replay FILE``: the summary, the exit status, and the interpreted core by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sched_core as sc
from _replay_scenarios import failure_scenario, random_scenario
from dsched._cli import app
from dsched._recording import MAGIC, RecordingReader, _frame

runner = CliRunner()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "run.rec"
    failure_scenario(path)
    return path


def _dsched(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DSCHED_CORE"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return subprocess.run(
        [sys.executable, "-m", "dsched", *args], input=stdin, env=env, capture_output=True, text=True, timeout=120
    )


def test_replay_prints_the_summary(recording: Path) -> None:
    result = runner.invoke(app, ["replay", str(recording)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    # Interpreted by default, even where the installed core is compiled.
    assert "replayed with the interpreted core: 26 batches" in out
    assert "decisions: all 26 batches match the recording" in out
    assert "tasks: 20 (erred 2, memory 2, released 16)" in out
    assert "w2: 1 threads" in out and "w3: 4 threads" in out
    assert "clients: 1 (alice)" in out
    assert "ended: closed" in out


def test_replay_json(recording: Path) -> None:
    result = runner.invoke(app, ["replay", str(recording), "--json", "--until-batch", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["batches"] == 4 and summary["until_batch"] == 4
    assert summary["core"] == "interpreted"
    assert summary["tasks"] == 20 and summary["ok"] is True
    assert summary["recorded"]["scheduler_id"] == "scheduler-test"


def test_replay_compiled_uses_the_installed_core(recording: Path) -> None:
    result = runner.invoke(app, ["replay", str(recording), "--compiled", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["core"] == ("compiled" if sc.COMPILED else "interpreted")


def test_replay_validate_and_until_batch(recording: Path) -> None:
    result = runner.invoke(app, ["replay", str(recording), "--validate", "--until-batch", "10"])
    assert result.exit_code == 0, result.output
    assert "stopped after batch 10 as asked" in result.stdout


def test_diverging_decisions_exit_1_and_name_the_batch(recording: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.rec"
    with RecordingReader(recording) as reader, open(tampered, "wb") as out:
        out.write(MAGIC + _frame(reader.header))
        for batch in reader:
            if batch.number == 7:
                batch.digest = bytes(16)
            out.write(_frame(batch))
    result = runner.invoke(app, ["replay", str(tampered)])
    assert result.exit_code == 1
    assert "DECISIONS DIFFER in 1 batches" in result.stdout and "batch 7:" in result.stdout
    assert "no end record" in result.stdout


def test_a_file_that_is_not_a_recording_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = runner.invoke(app, ["replay", str(path)])
    assert result.exit_code == 2
    assert "not a dsched recording" in result.stderr


def test_help_names_every_option() -> None:
    result = runner.invoke(app, ["replay", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--compiled", "--until-batch", "--step", "--json", "--validate"):
        assert option in result.stdout


def test_replay_as_a_command(recording: Path) -> None:
    done = _dsched("replay", str(recording))
    assert done.returncode == 0, done.stderr
    assert "replayed with the interpreted core: 26 batches" in done.stdout


@pytest.mark.parametrize("seed", [1, 2])
def test_the_interpreted_replay_of_a_recording_takes_the_same_decisions(tmp_path: Path, seed: int) -> None:
    # In the compiled test run the recording comes from the compiled core and
    # the replay runs interpreted: the two builds must decide alike.
    path = tmp_path / "random.rec"
    random_scenario(path, seed, n_tasks=200)
    done = _dsched("replay", str(path), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["core"] == "interpreted" and summary["ok"] is True
    assert summary["recorded"]["compiled"] is sc.COMPILED


def test_step_stops_in_pdb_before_each_batch(recording: Path) -> None:
    # pdb reads its commands from stdin: print the batch's size, go on; twice.
    done = _dsched("replay", str(recording), "--step", "--until-batch", "2", stdin="p len(events)\nc\np len(events)\nc\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(Pdb)") >= 2
    assert "replayed with the interpreted core: 2 batches" in done.stdout
