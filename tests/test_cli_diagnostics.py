"""``dsched profile``, ``dsched capture`` and ``dsched record`` against a running scheduler."""

from __future__ import annotations

import json
import pstats
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsched import Client, LocalCluster
from dsched._cli import app

runner = CliRunner()


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i % 3
    return total


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.gather(client.map(spin, range(500_000, 500_010)))
        yield cluster


def test_profile_of_the_workers_and_of_the_scheduler(cluster: LocalCluster, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    tree = json.loads(result.stdout)
    assert tree["name"] == "all" and tree["count"] > 0 and tree["missing"] == []
    out = tmp_path / "server.txt"
    result = runner.invoke(app, ["profile", cluster.scheduler_address, "--server", "--format", "collapsed", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    result = runner.invoke(app, ["profile", cluster.scheduler_address, "--format", "speedscope", "--last", "600"])
    assert json.loads(result.stdout)["profiles"][0]["type"] == "sampled"


def test_profile_reads_the_scheduler_file(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"address": cluster.scheduler_address}))
    result = runner.invoke(app, ["profile", "--scheduler-file", str(path), "--prefix", "spin"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] >= 0


def test_capture_writes_a_pstats_file(cluster: LocalCluster, tmp_path: Path) -> None:
    out = tmp_path / "s.pstats"
    result = runner.invoke(app, ["capture", cluster.scheduler_address, "--seconds", "0.3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert pstats.Stats(str(out)).total_calls > 0  # type: ignore[attr-defined]


def test_record_status_and_errors(cluster: LocalCluster) -> None:
    result = runner.invoke(app, ["record", "status", cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recording"] is False
    result = runner.invoke(app, ["record", "stop", cluster.scheduler_address])
    assert result.exit_code == 1 and "not recording" in result.output


def test_record_start_then_stop_then_replay(cluster: LocalCluster) -> None:
    result = runner.invoke(app, ["record", "start", cluster.scheduler_address, "--max-bytes", "20MB"])
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    path = Path(started["path"])
    try:
        assert started["recording"] is True and path.exists()
        with Client(cluster) as client:
            assert client.gather(client.map(abs, range(-20, 0))) == list(range(20, 0, -1))
        result = runner.invoke(app, ["record", "stop", cluster.scheduler_address])
        assert result.exit_code == 0, result.output
        stopped = json.loads(result.stdout)
        assert stopped["recording"] is False and stopped["batches"] > 0
        replayed = runner.invoke(app, ["replay", str(path), "--json"])
        assert replayed.exit_code == 0, replayed.output
        summary = json.loads(replayed.stdout)
        assert summary["ok"] is True and summary["batches"] == stopped["batches"]
        assert summary["recorded"]["first_batch"] == started["first_batch"]
    finally:
        path.unlink(missing_ok=True)
    result = runner.invoke(app, ["record", "start", cluster.scheduler_address, "--max-bytes", "lots"])
    assert result.exit_code != 0 and "--max-bytes" in result.output


def test_a_scheduler_that_is_not_there(tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "tcp://127.0.0.1:1"])
    assert result.exit_code == 1 and "cannot reach the scheduler" in result.output
    result = runner.invoke(app, ["profile"])
    assert result.exit_code != 0 and "ADDRESS or --scheduler-file" in result.output
