"""The dashboard app (dsched.dashboard._app, _api, _pages) against a fake DashboardSource."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from starlette.applications import Starlette
from starlette.types import Message
from starlette.testclient import TestClient

from dsched.dashboard import DashboardSource, Metric, ProfileQuery, create_app
from dsched.dashboard._app import COOKIE_NAME

JSON = dict[str, Any]

TREE: JSON = {
    "name": "all",
    "filename": "",
    "line": 0,
    "count": 10,
    "children": [
        {
            "name": "run",
            "filename": "/app/job.py",
            "line": 3,
            "count": 7,
            "children": [{"name": "inner", "filename": "/app/job.py", "line": 9, "count": 4, "children": []}],
        },
        {"name": "idle", "filename": "/app/loop.py", "line": 1, "count": 3, "children": []},
    ],
}

ODD_KEYS = ["('sum-3f2a', 0, 1)", "a b,c", 'say "hi"', "dir/file", "100%", "naïve?#&", " padded "]


class FakeSource:
    """A DashboardSource that records every call and returns canned data."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.n_workers = 3
        self.tasks: dict[str, JSON] = {key: {"key": key, "state": "memory"} for key in ODD_KEYS}
        self.capture_gate: anyio.Event | None = None
        self.fail_with: Exception | None = None

    def status(self) -> JSON:
        self.calls.append(("status", None))
        return {"scheduler": {"id": "s-1", "uptime_s": 12.5}, "tasks": {"memory": 4, "total": 4}, "workers": 3}

    def workers(self, limit: int) -> list[JSON]:
        self.calls.append(("workers", limit))
        # One more than asked: the app must cap what a source returns.
        return [{"address": f"tcp://10.0.0.{i}:1", "nthreads": 2} for i in range(min(self.n_workers, limit + 1))]

    def task_groups(self, limit: int) -> list[JSON]:
        self.calls.append(("task_groups", limit))
        return [{"name": f"inc-{i}", "prefix": "inc", "total": 10, "counts": {"memory": 10}, "done": 1.0, "nbytes": 80} for i in range(limit + 1)]

    def task(self, key: str) -> JSON | None:
        self.calls.append(("task", key))
        return self.tasks.get(key)

    def task_stream(self, since: float, limit: int) -> list[JSON]:
        self.calls.append(("task_stream", (since, limit)))
        return [{"key": f"k{i}", "start": since + i, "stop": since + i + 0.5, "status": "finished"} for i in range(limit + 1)]

    def metrics(self) -> list[Metric]:
        self.calls.append(("metrics", None))
        return [
            Metric("dsched_tasks", "gauge", "Tasks by state.", [({"state": "memory"}, 4.0), ({"state": "erred"}, 0.0)]),
            Metric("dsched_tasks_finished_total", "counter", "Tasks finished\nsince start.", [({}, 12.0)]),
            Metric("dsched_worker_memory_bytes", "gauge", "Worker memory.", [({"worker": 'tcp://a"b\\c\nd'}, 1.5e9)]),
            Metric("dsched-bad name", "gauge", "Odd name.", [({"0label": "x"}, float("nan")), ({}, float("inf"))]),
        ]

    async def profile(self, query: ProfileQuery) -> JSON:
        self.calls.append(("profile", query))
        return TREE

    async def profile_server(self, start: float | None, stop: float | None) -> JSON:
        self.calls.append(("profile_server", (start, stop)))
        return TREE

    async def capture(self, kind: str, seconds: float) -> bytes:
        self.calls.append(("capture", (kind, seconds)))
        if self.capture_gate is not None:
            await self.capture_gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return b"\x00pstats-bytes" if kind == "cprofile" else b'{"traceEvents": []}'

    async def record(self, action: str, path: str | None, max_bytes: int | None) -> JSON:
        self.calls.append(("record", (action, path, max_bytes)))
        if self.fail_with is not None:
            raise self.fail_with
        return {"recording": action == "start", "path": path, "bytes": 0, "events": 0}


def _as_source(fake: FakeSource) -> DashboardSource:
    return fake  # checks, under mypy, that the fake satisfies the protocol


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def client(source: FakeSource) -> Iterator[TestClient]:
    with TestClient(create_app(_as_source(source))) as test_client:
        yield test_client


# /health and the simple JSON routes


def test_health_is_ok_and_reads_nothing(client: TestClient, source: FakeSource) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert source.calls == []


def test_status_is_the_source_snapshot(client: TestClient) -> None:
    response = client.get("/api/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["scheduler"] == {"id": "s-1", "uptime_s": 12.5}


@pytest.mark.parametrize(
    ("query", "asked"),
    [("", 1000), ("?limit=2", 2), ("?limit=10000", 10000), ("?limit=99999", 10000)],
)
def test_workers_limit_default_and_clamp(client: TestClient, source: FakeSource, query: str, asked: int) -> None:
    source.n_workers = 20_000
    body = client.get(f"/api/workers{query}").json()
    assert source.calls == [("workers", asked)]
    assert body["limit"] == asked
    assert len(body["workers"]) == asked  # the source's extra row is cut


@pytest.mark.parametrize(("query", "asked"), [("", 100), ("?limit=7", 7), ("?limit=5000", 1000)])
def test_task_groups_limit_default_and_clamp(client: TestClient, source: FakeSource, query: str, asked: int) -> None:
    body = client.get(f"/api/tasks{query}").json()
    assert source.calls == [("task_groups", asked)]
    assert [group["name"] for group in body["groups"]] == [f"inc-{i}" for i in range(asked)]


@pytest.mark.parametrize("route", ["/api/workers", "/api/tasks", "/api/task-stream"])
@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5", "1e3"])
def test_bad_limit_is_a_400(client: TestClient, source: FakeSource, route: str, value: str) -> None:
    response = client.get(f"{route}?limit={value}")
    assert response.status_code == 400
    assert "limit" in response.json()["error"]
    assert source.calls == []


# /api/task/{key}


@pytest.mark.parametrize("key", ODD_KEYS)
def test_task_keys_with_odd_characters_are_decoded(client: TestClient, source: FakeSource, key: str) -> None:
    response = client.get("/api/task/" + quote(key, safe=""))
    assert response.status_code == 200
    assert response.json() == {"key": key, "state": "memory"}
    assert source.calls == [("task", key)]


@pytest.mark.parametrize("key", ["missing", "('missing', 1)", "a/b c"])
def test_unknown_task_is_a_json_404(client: TestClient, key: str) -> None:
    response = client.get("/api/task/" + quote(key, safe=""))
    assert response.status_code == 404
    assert response.json() == {"error": "unknown task", "key": key}


# /api/task-stream


def test_task_stream_passes_since_and_keeps_the_newest(client: TestClient, source: FakeSource) -> None:
    before = time.time()
    body = client.get("/api/task-stream?since=1000.5&limit=3").json()
    assert source.calls == [("task_stream", (1000.5, 3))]
    # The fake returns four rows, oldest first: the newest three are kept.
    assert [row["key"] for row in body["tasks"]] == ["k1", "k2", "k3"]
    assert before <= body["now"] <= time.time()


def test_task_stream_since_defaults_to_zero_and_negative_is_relative(client: TestClient, source: FakeSource) -> None:
    client.get("/api/task-stream")
    before = time.time()
    client.get("/api/task-stream?since=-10")
    (_, (since0, limit0)), (_, (since1, _limit1)) = source.calls
    assert (since0, limit0) == (0.0, 1000)
    assert before - 10 <= since1 <= time.time() - 10


@pytest.mark.parametrize("query", ["since=abc", "since=nan", "since=inf"])
def test_task_stream_bad_since_is_a_400(client: TestClient, query: str) -> None:
    response = client.get(f"/api/task-stream?{query}")
    assert response.status_code == 400
    assert "since" in response.json()["error"]


# /api/profile and /api/profile-server


def test_profile_builds_the_query(client: TestClient, source: FakeSource) -> None:
    response = client.get("/api/profile?start=100&stop=200&worker=tcp://a:1&worker=tcp://b:2&prefix=inc")
    assert response.status_code == 200
    assert response.json() == TREE
    ((name, query),) = source.calls
    assert name == "profile" and isinstance(query, ProfileQuery)
    assert (query.start, query.stop, query.workers, query.prefix) == (100.0, 200.0, ["tcp://a:1", "tcp://b:2"], "inc")


def test_profile_defaults_to_everything_and_negative_start_is_relative(client: TestClient, source: FakeSource) -> None:
    client.get("/api/profile")
    before = time.time()
    client.get("/api/profile?start=-60&prefix=")
    (_, everything), (_, recent) = source.calls
    assert (everything.start, everything.stop, everything.workers, everything.prefix) == (None, None, None, None)
    assert before - 60 <= recent.start <= time.time() - 60
    assert recent.prefix is None


@pytest.mark.parametrize("route", ["/api/profile", "/api/profile-server"])
@pytest.mark.parametrize(
    ("query", "word"),
    [("start=x", "start"), ("stop=nan", "stop"), ("start=20&stop=10", "after"), ("format=svg", "format")],
)
def test_profile_bad_parameters_are_400s(client: TestClient, source: FakeSource, route: str, query: str, word: str) -> None:
    response = client.get(f"{route}?{query}")
    assert response.status_code == 400
    assert word in response.json()["error"]
    assert source.calls == []


def test_profile_server_passes_the_window(client: TestClient, source: FakeSource) -> None:
    assert client.get("/api/profile-server?start=5&stop=6").json() == TREE
    assert client.get("/api/profile-server").status_code == 200
    assert source.calls == [("profile_server", (5.0, 6.0)), ("profile_server", (None, None))]


@pytest.mark.parametrize(("route", "stem"), [("/api/profile", "profile"), ("/api/profile-server", "scheduler-profile")])
def test_speedscope_download(client: TestClient, route: str, stem: str) -> None:
    response = client.get(f"{route}?format=speedscope")
    assert response.status_code == 200
    assert re.fullmatch(
        rf'attachment; filename="{stem}-\d{{8}}-\d{{6}}\.speedscope\.json"', response.headers["content-disposition"]
    )
    document = response.json()
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    (profile,) = document["profiles"]
    assert profile["type"] == "sampled"
    assert sum(profile["weights"]) == TREE["count"]
    names = {frame["name"] for frame in document["shared"]["frames"]}
    assert {"run", "inner", "idle"} <= names


@pytest.mark.parametrize(("route", "stem"), [("/api/profile", "profile"), ("/api/profile-server", "scheduler-profile")])
def test_collapsed_download(client: TestClient, route: str, stem: str) -> None:
    response = client.get(f"{route}?format=collapsed")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert re.fullmatch(rf'attachment; filename="{stem}-\d{{8}}-\d{{6}}\.collapsed\.txt"', response.headers["content-disposition"])
    counts = {}
    for line in response.text.strip().splitlines():
        stack, count = line.rsplit(" ", 1)
        counts[stack.split(";")[-1]] = int(count)
    # Self counts: run 7 - 4, inner 4, idle 3.
    assert sorted(counts.values()) == [3, 3, 4]
    assert any(leaf.startswith("inner (/app/job.py:9)") for leaf in counts)


# POST /api/capture


@pytest.mark.parametrize(
    ("query", "asked", "suffix", "media"),
    [
        ("", ("cprofile", 5.0), "pstats", "application/octet-stream"),
        ("?kind=cprofile&seconds=0.5", ("cprofile", 0.5), "pstats", "application/octet-stream"),
        ("?kind=viztracer&seconds=300", ("viztracer", 300.0), "json", "application/json"),
    ],
)
def test_capture_downloads_the_file(
    client: TestClient, source: FakeSource, query: str, asked: tuple[str, float], suffix: str, media: str
) -> None:
    response = client.post(f"/api/capture{query}")
    assert response.status_code == 200
    assert source.calls == [("capture", asked)]
    assert response.headers["content-type"].startswith(media)
    assert re.fullmatch(rf'attachment; filename="scheduler-\d{{8}}-\d{{6}}\.{suffix}"', response.headers["content-disposition"])
    assert response.content == (b"\x00pstats-bytes" if suffix == "pstats" else b'{"traceEvents": []}')


@pytest.mark.parametrize("query", ["seconds=0", "seconds=-1", "seconds=300.5", "seconds=abc", "seconds=inf", "kind=perf"])
def test_capture_bad_parameters_are_400s(client: TestClient, source: FakeSource, query: str) -> None:
    response = client.post(f"/api/capture?{query}")
    assert response.status_code == 400
    assert response.json()["error"]
    assert source.calls == []


def test_capture_value_error_is_a_400_and_get_is_refused(client: TestClient, source: FakeSource) -> None:
    source.fail_with = ValueError("VizTracer is not installed")
    response = client.post("/api/capture?kind=viztracer")
    assert response.status_code == 400
    assert response.json() == {"error": "VizTracer is not installed"}
    assert client.get("/api/capture").status_code == 405


async def _asgi_post(app: Starlette, path: str, query: str) -> int:
    """POST straight through the ASGI interface (two at once, which TestClient cannot do): the status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
        "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


@pytest.mark.anyio
async def test_a_second_concurrent_capture_is_a_409(source: FakeSource) -> None:
    source.capture_gate = anyio.Event()
    app = create_app(_as_source(source))
    first: list[int] = []

    async def capture() -> None:
        first.append(await _asgi_post(app, "/api/capture", "seconds=1"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(capture)
        while not source.calls:
            await anyio.sleep(0.001)
        assert await _asgi_post(app, "/api/capture", "seconds=1") == 409
        source.capture_gate.set()
    assert first == [200]
    # Once the first is done, another may start.
    assert await _asgi_post(app, "/api/capture", "seconds=1") == 200
    assert len(source.calls) == 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# POST /api/record


def test_record_get_asks_for_the_state(client: TestClient, source: FakeSource) -> None:
    response = client.get("/api/record")
    assert response.status_code == 200 and response.json()["recording"] is False
    assert source.calls == [("record", ("status", None, None))]
    assert client.put("/api/record", json={"action": "start"}).status_code == 405


def test_record_passes_through(client: TestClient, source: FakeSource) -> None:
    started = client.post("/api/record", json={"action": "start", "path": "/tmp/rec.bin", "max_bytes": 1000})
    stopped = client.post("/api/record", json={"action": "stop"})
    assert started.json() == {"recording": True, "path": "/tmp/rec.bin", "bytes": 0, "events": 0}
    assert stopped.json()["recording"] is False
    assert source.calls == [("record", ("start", "/tmp/rec.bin", 1000)), ("record", ("stop", None, None))]


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"action": "pause"}, "action"),
        ({}, "action"),
        ({"action": "start", "path": 3}, "path"),
        ({"action": "start", "max_bytes": 0}, "max_bytes"),
        ({"action": "start", "max_bytes": "10"}, "max_bytes"),
        ({"action": "start", "max_bytes": True}, "max_bytes"),
        (["start"], "object"),
    ],
)
def test_record_bad_bodies_are_400s(client: TestClient, source: FakeSource, body: Any, word: str) -> None:
    response = client.post("/api/record", json=body)
    assert response.status_code == 400
    assert word in response.json()["error"]
    assert source.calls == []


def test_record_needs_json(client: TestClient, source: FakeSource) -> None:
    as_text = client.post("/api/record", content=b'{"action": "start"}', headers={"content-type": "text/plain"})
    broken = client.post("/api/record", content=b'{"action": ', headers={"content-type": "application/json"})
    assert (as_text.status_code, broken.status_code) == (400, 400)
    assert "Content-Type" in as_text.json()["error"]
    assert "not valid JSON" in broken.json()["error"]
    assert source.calls == []


def test_record_source_error_is_a_400(client: TestClient, source: FakeSource) -> None:
    source.fail_with = ValueError("already recording")
    response = client.post("/api/record", json={"action": "start"})
    assert (response.status_code, response.json()) == (400, {"error": "already recording"})


def test_cross_origin_posts_are_refused(client: TestClient, source: FakeSource) -> None:
    foreign = client.post("/api/capture", headers={"origin": "http://evil.example"})
    opaque = client.post("/api/record", json={"action": "stop"}, headers={"origin": "null"})
    same = client.post("/api/record", json={"action": "stop"}, headers={"origin": "http://testserver"})
    assert (foreign.status_code, opaque.status_code, same.status_code) == (403, 403, 200)
    assert source.calls == [("record", ("stop", None, None))]


# /metrics

_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? (NaN|[+-]Inf|-?[0-9.e+-]+)$')


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = response.text.splitlines()
    assert response.text.endswith("\n")
    assert lines[:4] == [
        "# HELP dsched_tasks Tasks by state.",
        "# TYPE dsched_tasks gauge",
        'dsched_tasks{state="memory"} 4',
        'dsched_tasks{state="erred"} 0',
    ]
    assert "# HELP dsched_tasks_finished_total Tasks finished\\nsince start." in lines
    assert "# TYPE dsched_tasks_finished_total counter" in lines
    assert "dsched_tasks_finished_total 12" in lines
    assert 'dsched_worker_memory_bytes{worker="tcp://a\\"b\\\\c\\nd"} 1500000000' in lines
    assert 'dsched_bad_name{_0label="x"} NaN' in lines
    assert "dsched_bad_name +Inf" in lines
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or _SAMPLE.match(line), line


# Access control


@pytest.fixture
def guarded(source: FakeSource) -> Iterator[TestClient]:
    with TestClient(create_app(_as_source(source), secret="s3cret")) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/status", "/api/status", "/api/workers", "/metrics", "/static/dashboard.js", "/"])
def test_secret_is_required(guarded: TestClient, path: str) -> None:
    response = guarded.get(path, follow_redirects=False)
    assert response.status_code == 401
    assert response.json()["error"].startswith("unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert guarded.get(path, headers={"authorization": "Bearer wrong"}, follow_redirects=False).status_code == 401
    assert guarded.get(path + "?token=wrong", follow_redirects=False).status_code == 401


def test_health_needs_no_secret(guarded: TestClient) -> None:
    assert guarded.get("/health").json() == {"status": "ok"}


def test_bearer_header_opens_every_route(guarded: TestClient) -> None:
    headers = {"authorization": "Bearer s3cret"}
    assert guarded.get("/api/status", headers=headers).status_code == 200
    assert guarded.get("/metrics", headers=headers).status_code == 200
    assert guarded.post("/api/capture?seconds=1", headers=headers).status_code == 200
    assert "set-cookie" not in guarded.get("/api/status", headers=headers).headers


def test_token_query_sets_a_cookie_for_later_requests(guarded: TestClient) -> None:
    first = guarded.get("/status?token=s3cret")
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "s3cret" not in cookie
    # The client now holds the cookie: the page's own fetches need nothing else.
    assert guarded.get("/api/status").status_code == 200
    guarded.cookies.clear()
    assert guarded.get("/api/status").status_code == 401
    guarded.cookies.set(COOKIE_NAME, "forged")
    assert guarded.get("/api/status").status_code == 401


def test_create_app_checks_its_arguments(source: FakeSource) -> None:
    with pytest.raises(ValueError, match="refresh_ms"):
        create_app(_as_source(source), refresh_ms=0)
    with pytest.raises(ValueError, match="secret"):
        create_app(_as_source(source), secret="")


# HTML pages and static files

PAGES = {
    "status": (["dashboard.js", "workers.js", "status.js"], ["task-groups", "task-stream", "workers-table", "summary"]),
    "workers": (["dashboard.js", "workers.js"], ["workers-table"]),
    "profile": (["dashboard.js", "flamegraph.js"], ["flamegraph", "window", "worker", "prefix", "download-speedscope"]),
    "profile-server": (
        ["dashboard.js", "flamegraph.js", "record.js"],
        ["flamegraph", "window", "download-collapsed", "capture-cprofile", "record-start", "record-stop", "record-info"],
    ),
}


def test_root_redirects_to_status(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "status"
    assert client.get("/").url.path == "/status"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_pages_are_served_with_their_scripts(source: FakeSource, page: str) -> None:
    with TestClient(create_app(_as_source(source), refresh_ms=250)) as test_client:
        response = test_client.get(f"/{page}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    scripts, ids = PAGES[page]
    assert re.findall(r'<script src="static/([a-z]+\.js)\?v=[^"]+"></script>', html) == scripts
    assert "<script>" not in html  # no inline script: the CSP forbids it
    assert f'<body data-page="{page}" data-refresh-ms="250">' in html
    for element_id in ids:
        assert f'id="{element_id}"' in html
    assert re.findall(r'<nav id="nav">.*?</nav>', html)
    assert f'<a href="{page}" class="active" aria-current="page">' in html
    assert source.calls == []


@pytest.mark.parametrize(
    ("name", "media"),
    [
        ("dashboard.css", "text/css"),
        ("dashboard.js", "javascript"),
        ("status.js", "javascript"),
        ("workers.js", "javascript"),
        ("flamegraph.js", "javascript"),
        ("record.js", "javascript"),
    ],
)
def test_static_files_are_served(client: TestClient, name: str, media: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert media in response.headers["content-type"]
    assert len(response.content) > 1000


def test_unknown_routes_are_404s(client: TestClient) -> None:
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/task").status_code == 404


def test_json_encodes_non_finite_numbers_as_null(source: FakeSource) -> None:
    source.tasks["nan"] = {"key": "nan", "nbytes": float("nan")}
    with TestClient(create_app(_as_source(source))) as test_client:
        response = test_client.get("/api/task/nan")
    assert json.loads(response.content) == {"key": "nan", "nbytes": None}
