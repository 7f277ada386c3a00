"""The scheduler's diagnostics, unit by unit: throughput, the task stream, workers' profiles, captures, recording."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import msgspec
import pytest

import sched_core as sc
from dsched import _protocol as p
from dsched._profiler import CallTree
from dsched._recording import DEFAULT_MAX_BYTES
from dsched._scheduler_diagnostics import SchedulerDiagnostics, render_profile
from dsched._scheduler_server import SchedulerServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def diagnostics() -> SchedulerDiagnostics:
    return SchedulerServer(profile_interval=None).diagnostics


async def test_throughput_over_a_window() -> None:
    d = diagnostics()
    assert d.throughput() == 0.0
    for second, finished in enumerate([0, 100, 300, 600]):
        d.progress.append((1000.0 + second, finished, 0))
    assert d.throughput(window=2.0) == pytest.approx((600 - 100) / 2)
    assert d.throughput(window=10.0) == pytest.approx(600 / 3)  # less history than the window: all of it


async def test_the_task_stream_is_bounded_and_keeps_both_clocks() -> None:
    d = diagnostics()
    d.task_done("a", "tcp://w:1", 100.0, 0.5, False)
    d.task_done("b", "tcp://w:1", 0.0, 0.25, True)  # no start reported: ends when it arrived
    (key, worker, start, stop, erred, arrived), (key_b, _, start_b, stop_b, erred_b, arrived_b) = d.task_stream
    assert (key, worker, start, stop, erred) == ("a", "tcp://w:1", 100.0, 100.5, False)
    assert key_b == "b" and erred_b and stop_b == arrived_b and stop_b - start_b == pytest.approx(0.25)
    for i in range(d.task_stream.maxlen or 0):
        d.task_done(f"k{i}", "w", 1.0, 0.1, False)
    assert len(d.task_stream) == d.task_stream.maxlen and d.task_stream[0][0] == "k0"


async def test_a_malformed_profile_from_a_worker_is_dropped_and_the_request_still_ends() -> None:
    d = diagnostics()
    # Two "workers" asked; each answers with something the scheduler must not choke on.
    d._profile_requests[7] = {"event": anyio.Event(), "waiting": {"w1", "w2", "w3"}, "trees": []}
    deep = b"[" * 5000 + b"]" * 5000
    d.profile_arrived("w1", p.ProfileData(7, deep))
    d.profile_arrived("w2", p.ProfileData(7, b"\xff not json"))
    good = CallTree()
    good.add_stack([("f.py", 1, "f")], 3)
    d.profile_arrived("w3", p.ProfileData(7, msgspec.json.encode(good.to_json())))
    d.profile_arrived("w3", p.ProfileData(99, b"{}"))  # a request nobody made: ignored
    pending = d._profile_requests[7]
    assert pending["event"].is_set() and pending["waiting"] == set()
    assert [tree.count for tree in pending["trees"]] == [3]


async def test_asking_no_worker_gives_an_empty_tree_at_once() -> None:
    d = diagnostics()
    with anyio.fail_after(1):
        tree = await d.profile_workers(None, None, ["tcp://nobody:1"], None)
    assert tree["count"] == 0 and tree["missing"] == []


async def test_captures_check_their_arguments() -> None:
    d = diagnostics()
    with pytest.raises(ValueError, match="seconds"):
        await d.capture("cprofile", 0)
    with pytest.raises(ValueError, match="seconds"):
        await d.capture("cprofile", 301)
    with pytest.raises(ValueError, match="kind"):
        await d.capture("perf", 1)


async def test_profiles_render_in_three_formats() -> None:
    tree = CallTree()
    tree.add_stack([("a.py", 1, "a"), ("b.py", 2, "b")], 2)
    as_json = tree.to_json()
    assert json.loads(render_profile(as_json, None, "x")) == as_json
    assert json.loads(render_profile(as_json, "speedscope", "x"))["name"] == "x"
    assert render_profile(as_json, "collapsed", "x").decode().splitlines() == ["a (a.py:1);b (b.py:2) 2"]
    with pytest.raises(ValueError, match="format"):
        render_profile(as_json, "svg", "x")


async def test_recordings_start_with_the_scheduler_or_on_request_into_the_record_dir(tmp_path: Path) -> None:
    server = SchedulerServer(profile_interval=None, record=str(tmp_path / "a.rec"))
    d = server.diagnostics
    assert d.record("status")["recording"] is True
    with pytest.raises(ValueError, match="records already"):
        d.start_recording(str(tmp_path / "b.rec"))
    with pytest.raises(ValueError, match="records already"):
        d.record("start")
    stopped = d.record("stop")
    assert stopped["recording"] is False and stopped["stopped"] == "closed"
    with pytest.raises(ValueError, match="not recording"):
        d.record("stop")
    with pytest.raises(ValueError, match="action"):
        d.record("pause")
    # Mid-run, on request: a new file in the record directory (beside --record's), from a snapshot.
    server.state.handle_events([sc.ClientAdded("c")])
    started = d.record("start", max_bytes=10**6)
    assert started["recording"] is True and started["first_batch"] == 1
    path = Path(started["path"])
    assert path.parent == tmp_path and path.name.startswith(server.scheduler_id) and path.suffix == ".dsrec"
    assert d.recorder is not None and d.recorder.max_bytes == 10**6
    d.record("stop")
    again = d.record("start", max_bytes=10**12)  # a request may lower the bound, never raise it
    assert again["path"] != started["path"] and d.recorder.max_bytes == DEFAULT_MAX_BYTES
    d.record("stop")
    assert not (tmp_path / "b.rec").exists()


async def test_the_record_directory_defaults_to_the_environment_then_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSCHED_RECORD_DIR", str(tmp_path / "from-env"))
    d = SchedulerServer(profile_interval=None).diagnostics
    started = d.record("start")
    assert Path(started["path"]).parent == tmp_path / "from-env" and started["first_batch"] == 0
    d.record("stop")
    chosen = SchedulerServer(profile_interval=None, record_dir=str(tmp_path / "chosen")).diagnostics
    assert Path(chosen.record("start")["path"]).parent == tmp_path / "chosen"
    chosen.record("stop")


