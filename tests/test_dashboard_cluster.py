"""The dashboard, profiles and captures of a running cluster, through HTTP and through the client.

One cluster per module: a scheduler serving its dashboard on a free loopback
port and two worker processes.  ``tests/test_dashboard_app.py`` covers the
app's routes against a fake source; here every endpoint answers from a real
scheduler that has run real work.
"""

from __future__ import annotations

import io
import json
import pstats
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

import sched_core

from dsched import Client, LocalCluster, wait
from dsched._client_loop import DiagnosticsError


def spin(n: int) -> int:
    """Pure Python, busy: what the profilers should find."""
    total = 0
    for i in range(n):
        total += i % 7
    return total


def fails(x: int) -> int:
    raise ValueError(f"no {x}")


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[LocalCluster, Client]]:
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            # Distinct arguments: pure keys would otherwise make one task of them all.
            client.gather(client.map(spin, range(200_000, 200_040)))
            erred = client.map(fails, range(3))  # erred tasks, kept while these futures live
            wait(erred)
            yield cluster, client
            del erred


@pytest.fixture(scope="module")
def http(running: tuple[LocalCluster, Client]) -> Iterator[httpx.Client]:
    cluster, _ = running
    assert cluster.dashboard_link is not None
    base = cluster.dashboard_link.removesuffix("/status")
    with httpx.Client(base_url=base, timeout=30) as session:
        yield session


def find(node: dict[str, Any], name: str) -> int:
    """Samples in frames named ``name`` (outermost occurrences)."""
    if node["name"] == name:
        return int(node["count"])
    return sum(find(child, name) for child in node["children"])


def test_links_agree(running: tuple[LocalCluster, Client]) -> None:
    cluster, client = running
    assert cluster.dashboard_link == client.dashboard_link
    assert cluster.dashboard_link is not None and cluster.dashboard_link.startswith("http://127.0.0.1:")


def test_health(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_status(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    status = http.get("/api/status").json()
    assert status["workers"] == 2 and status["threads"] == 2 and status["clients"] >= 1
    assert status["throughput"]["finished"] >= 40
    assert status["throughput"]["erred"] >= 3
    assert status["tasks"]["erred"] == 3
    assert status["scheduler"]["address"] == running[0].scheduler_address
    assert status["scheduler"]["versions"]["dsched"]
    # The scheduler process runs the build under test, whatever the working directory holds.
    assert status["scheduler"]["versions"]["compiled"] is sched_core.COMPILED
    assert running[1].scheduler_status()["tasks"] == status["tasks"]  # the same figures through the client


def test_workers(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    deadline = time.monotonic() + 20
    while True:  # memory and CPU come with the workers' heartbeats (every 0.5 s)
        workers = http.get("/api/workers").json()["workers"]
        if all(w["memory"] > 0 and w["cpu"] is not None for w in workers) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(w["address"] for w in workers) == sorted(running[0].workers)
    assert sum(w["tasks_finished"] for w in workers) >= 40
    assert all(w["memory"] > 0 and w["cpu"] >= 0 for w in workers)
    assert len(http.get("/api/workers", params={"limit": 1}).json()["workers"]) == 1


def test_task_groups_and_one_task(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    groups = {g["prefix"]: g for g in http.get("/api/tasks").json()["groups"]}
    assert groups["fails"]["counts"]["erred"] == 3 and groups["fails"]["total"] == 3
    key = running[1].map(fails, [0])[0].key
    task = http.get(f"/api/task/{key}").json()
    assert task["key"] == key and task["state"] == "erred" and task["wanted_by"]
    assert http.get("/api/task/no-such-key").status_code == 404


def test_task_stream(http: httpx.Client) -> None:
    stream = http.get("/api/task-stream", params={"since": 0}).json()["tasks"]
    spins = [t for t in stream if t["prefix"] == "spin"]
    assert len(spins) >= 40
    assert all(t["stop"] >= t["start"] > 0 and t["worker"].startswith("tcp://") for t in spins)
    assert {t["status"] for t in stream if t["prefix"] == "fails"} == {"erred"}
    assert [t["arrived"] for t in stream] == sorted(t["arrived"] for t in stream)
    assert all(t["arrived"] >= t["stop"] - 1.0 for t in stream)  # one machine: the clocks agree
    latest = stream[-1]["arrived"]
    assert http.get("/api/task-stream", params={"since": latest}).json()["tasks"] == []
    newest = http.get("/api/task-stream", params={"since": 0, "limit": 5}).json()["tasks"]
    assert newest == stream[-5:]


def test_metrics(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    assert "# TYPE dsched_tasks gauge" in text
    assert 'dsched_tasks{state="erred"} 3' in text
    assert "dsched_workers 2" in text
    finished = next(line for line in text.splitlines() if line.startswith("dsched_tasks_finished_total "))
    assert float(finished.split()[1]) >= 40
    # The scheduler's process is a `dsched scheduler`: its profiler is driven by SIGALRM.
    samples = next(line for line in text.splitlines() if line.startswith("dsched_profiler_samples_total"))
    assert samples.startswith('dsched_profiler_samples_total{driver="signal"} ') and float(samples.split()[1]) > 0
    assert 'dsched_profiler_interval_seconds{driver="signal"} 0.01' in text


def test_pages(http: httpx.Client) -> None:
    for page in ("/status", "/workers", "/profile", "/profile-server"):
        response = http.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]


def test_a_busy_function_shows_in_the_workers_profile(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    _, client = running
    start = time.time()
    client.gather(client.map(spin, range(3_000_000, 3_000_020)))  # ~2-4 s of pure Python
    tree = client.profile(start=start, prefix="spin")
    assert tree["missing"] == []
    # Only spin tasks' threads were asked for, and spin is where they spent their time.
    assert tree["count"] >= 20
    assert find(tree, "spin") >= 0.5 * tree["count"]
    # The same through HTTP, for one worker.
    worker = running[0].workers[0]
    one = http.get("/api/profile", params={"start": start, "worker": worker, "prefix": "spin"}).json()
    assert 0 < one["count"] < tree["count"] + 50
    other = client.profile(start=start, prefix="no-such-prefix")
    assert other["count"] == 0


def test_the_scheduler_profiles_its_own_loop(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    _, client = running
    tree = client.profile_server()
    assert tree["count"] > 0
    over_http = http.get("/api/profile-server").json()
    assert over_http["count"] >= tree["count"]  # it keeps sampling
    # The event loop's thread: asyncio's loop is on every stack.
    assert find(tree, "run_forever") > 0.9 * tree["count"]


def test_exports(http: httpx.Client, running: tuple[LocalCluster, Client], tmp_path: Any) -> None:
    _, client = running
    speedscope = client.profile(format="speedscope", filename=tmp_path / "p.speedscope.json")
    assert speedscope["profiles"][0]["type"] == "sampled"
    assert json.loads((tmp_path / "p.speedscope.json").read_text()) == speedscope
    collapsed = client.profile_server(format="collapsed")
    lines = collapsed.splitlines()
    assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    response = http.get("/api/profile", params={"format": "collapsed"})
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]


def test_cprofile_capture(http: httpx.Client, running: tuple[LocalCluster, Client], tmp_path: Any) -> None:
    _, client = running
    data = client.capture_profile(seconds=0.5, filename=tmp_path / "s.pstats")
    assert (tmp_path / "s.pstats").read_bytes() == data
    stats = pstats.Stats(str(tmp_path / "s.pstats"), stream=io.StringIO())
    functions = {name for _, _, name in stats.stats}  # type: ignore[attr-defined]
    assert "_step" in functions or "_periodic" in functions  # the scheduler's loop ran under it
    response = http.post("/api/capture", params={"kind": "cprofile", "seconds": 0.3})
    assert response.status_code == 200 and len(response.content) > 100
    with pytest.raises(DiagnosticsError, match="seconds"):
        client.capture_profile(seconds=0)
    with pytest.raises(DiagnosticsError, match="kind"):
        client.capture_profile(kind="perf")


def test_recording_on_request(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    _, client = running
    assert client.recording_status()["recording"] is False
    with pytest.raises(DiagnosticsError, match="not recording"):
        client.stop_recording()
    # No request can name the file the scheduler writes.
    response = http.post("/api/record", json={"action": "start", "path": "/tmp/x.rec"})
    assert response.status_code == 400 and "cannot name the file" in response.json()["error"]
    started = client.start_recording(max_bytes=50_000_000)
    try:
        assert started["recording"] is True and started["first_batch"] > 0  # mid-run: from a snapshot
        assert client.submit(spin, 1_000).result() == spin(1_000)
        during = http.get("/api/record").json()  # what the dashboard's Record panel shows
        assert during["recording"] is True and during["path"] == started["path"] and during["bytes"] > 0
        with pytest.raises(DiagnosticsError, match="records already"):
            client.start_recording()
        stopped = http.post("/api/record", json={"action": "stop"}).json()
        assert stopped["recording"] is False and stopped["batches"] > 0 and stopped["path"] == started["path"]
    finally:
        Path(started["path"]).unlink(missing_ok=True)


def test_viztracer_capture(http: httpx.Client, running: tuple[LocalCluster, Client]) -> None:
    _, client = running  # the test extra installs VizTracer
    trace = json.loads(client.capture_profile(seconds=0.5, kind="viztracer"))
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any(name.startswith("SchedulerServer._step") for name in names)
    response = http.post("/api/capture", params={"kind": "viztracer", "seconds": 0.2})
    assert response.status_code == 200 and "traceEvents" in response.json()
