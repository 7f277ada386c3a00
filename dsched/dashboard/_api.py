"""The dashboard's JSON routes, ``/health`` and ``/metrics``.

Every endpoint is a coroutine on purpose: Starlette runs plain functions in a
thread pool, and the source must only be read from the loop that serves the app.
Query parameters are checked here (a bad one is a 400 with a JSON error, never a
500) and every listing is capped, so no request costs more than its limit.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dsched.dashboard._source import JSON, DashboardSource, Metric, ProfileQuery

__all__ = ["JSONBytes", "api_routes", "prometheus_text"]

WORKERS_LIMIT = (1000, 10_000)  # (default, maximum)
TASKS_LIMIT = (100, 1000)
STREAM_LIMIT = (1000, 10_000)
CAPTURE_SECONDS = (5.0, 300.0)
PROFILE_FORMATS = ("json", "speedscope", "collapsed")
CAPTURE_KINDS = {"cprofile": ".pstats", "viztracer": ".json"}
RECORD_BODY_MAX = 64 * 1024


class JSONBytes(Response):
    """JSON encoded by msgspec: fast for large listings, and a NaN becomes null, not a 500."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


class BadRequest(Exception):
    """A request the route cannot serve: its message is the 400's error."""


Endpoint = Callable[[Request], Awaitable[Response]]


def _checked(endpoint: Endpoint) -> Endpoint:
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except BadRequest as exc:
            return JSONBytes({"error": str(exc)}, status_code=400)

    return wrapper


def _limit(request: Request, bounds: tuple[int, int]) -> int:
    """The ``limit`` parameter: at least 1; above the maximum it is clamped to it."""
    default, maximum = bounds
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer, not {raw!r}") from None
    if value < 1:
        raise BadRequest(f"limit must be at least 1, not {value}")
    return min(value, maximum)


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be finite, not {raw!r}")
    return value


def _window(request: Request) -> tuple[float | None, float | None]:
    """``start`` and ``stop`` as wall-clock times; a negative value counts back from now.

    Relative times let a page ask for "the last 10 s" without trusting the
    browser's clock to agree with the scheduler's.
    """
    start, stop = _float(request, "start"), _float(request, "stop")
    now = time.time()
    if start is not None and start < 0:
        start = now + start
    if stop is not None and stop < 0:
        stop = now + stop
    if start is not None and stop is not None and start > stop:
        raise BadRequest(f"start ({start}) is after stop ({stop})")
    return start, stop


def _choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _attachment(body: bytes, media_type: str, filename: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type=media_type, headers=headers)


def _profile_response(tree: JSON, fmt: str, name: str) -> Response:
    if fmt == "json":
        return JSONBytes(tree)
    # Imported here: the exporters are needed only for downloads.
    from dsched._profile_export import to_collapsed, to_speedscope

    filename = f"{name}-{_stamp()}"
    if fmt == "speedscope":
        body = msgspec.json.encode(to_speedscope(tree, name))
        return _attachment(body, "application/json", f"{filename}.speedscope.json")
    return _attachment(to_collapsed(tree).encode(), "text/plain; charset=utf-8", f"{filename}.collapsed.txt")


def api_routes(source: DashboardSource) -> list[BaseRoute]:
    """The JSON routes and ``/metrics``, reading ``source``."""
    api = _Api(source)
    return [
        Route("/health", api.health),
        Route("/api/status", api.status),
        Route("/api/workers", _checked(api.workers)),
        Route("/api/tasks", _checked(api.tasks)),
        Route("/api/task/{key:path}", api.task),
        Route("/api/task-stream", _checked(api.task_stream)),
        Route("/api/profile", _checked(api.profile)),
        Route("/api/profile-server", _checked(api.profile_server)),
        Route("/api/capture", _checked(api.capture), methods=["POST"]),
        Route("/api/record", _checked(api.record), methods=["GET", "POST"]),
        Route("/metrics", api.metrics),
    ]


class _Api:
    """The endpoints over one source."""

    def __init__(self, source: DashboardSource) -> None:
        self.source = source
        self.capturing = False

    async def health(self, request: Request) -> Response:
        return JSONBytes({"status": "ok"})

    async def status(self, request: Request) -> Response:
        return JSONBytes(self.source.status())

    async def workers(self, request: Request) -> Response:
        limit = _limit(request, WORKERS_LIMIT)
        return JSONBytes({"workers": self.source.workers(limit)[:limit], "limit": limit})

    async def tasks(self, request: Request) -> Response:
        limit = _limit(request, TASKS_LIMIT)
        return JSONBytes({"groups": self.source.task_groups(limit)[:limit], "limit": limit})

    async def task(self, request: Request) -> Response:
        key: str = request.path_params["key"]
        found = self.source.task(key)
        if found is None:
            return JSONBytes({"error": "unknown task", "key": key}, status_code=404)
        return JSONBytes(found)

    async def task_stream(self, request: Request) -> Response:
        limit = _limit(request, STREAM_LIMIT)
        since = _float(request, "since")
        now = time.time()
        if since is None:
            since = 0.0
        elif since < 0:  # relative, as for profiles: -10 is "the last 10 s"
            since = now + since
        rows = self.source.task_stream(since, limit)
        # The newest rows when the source gave more; ``now`` lets the page place
        # them on the scheduler's clock rather than the browser's.
        return JSONBytes({"tasks": rows[-limit:], "now": now, "limit": limit})

    async def profile(self, request: Request) -> Response:
        start, stop = _window(request)
        fmt = _choice(request, "format", PROFILE_FORMATS, "json")
        workers = [w for w in request.query_params.getlist("worker") if w] or None
        prefix = request.query_params.get("prefix") or None
        tree = await self.source.profile(ProfileQuery(start, stop, workers, prefix))
        return _profile_response(tree, fmt, "profile")

    async def profile_server(self, request: Request) -> Response:
        start, stop = _window(request)
        fmt = _choice(request, "format", PROFILE_FORMATS, "json")
        tree = await self.source.profile_server(start, stop)
        return _profile_response(tree, fmt, "scheduler-profile")

    async def capture(self, request: Request) -> Response:
        kind = _choice(request, "kind", tuple(CAPTURE_KINDS), "cprofile")
        seconds = _float(request, "seconds")
        seconds = CAPTURE_SECONDS[0] if seconds is None else seconds
        if not 0 < seconds <= CAPTURE_SECONDS[1]:
            raise BadRequest(f"seconds must be in (0, {CAPTURE_SECONDS[1]:g}], not {seconds:g}")
        # One at a time: two profilers cannot both trace the loop.  No await
        # between the check and the set, so the flag is race-free on one loop.
        if self.capturing:
            return JSONBytes({"error": "a capture is already running"}, status_code=409)
        self.capturing = True
        try:
            data = await self.source.capture(kind, seconds)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        finally:
            self.capturing = False
        media = "application/json" if kind == "viztracer" else "application/octet-stream"
        return _attachment(data, media, f"scheduler-{_stamp()}{CAPTURE_KINDS[kind]}")

    async def record(self, request: Request) -> Response:
        if request.method == "GET":
            action, path, max_bytes = "status", None, None
        else:
            action, path, max_bytes = await _record_body(request)
        try:
            state = await self.source.record(action, path, max_bytes)
        except (ValueError, OSError) as exc:
            raise BadRequest(str(exc)) from None
        return JSONBytes(state)

    async def metrics(self, request: Request) -> Response:
        text = prometheus_text(self.source.metrics())
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def _record_body(request: Request) -> tuple[str, str | None, int | None]:
    # A JSON content type is required: a cross-site form or "simple" fetch
    # cannot send one without a CORS preflight, which this app never grants.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > RECORD_BODY_MAX:
            raise BadRequest("the body is too large")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object like {"action": "start"}')
    action, path, max_bytes = data.get("action"), data.get("path"), data.get("max_bytes")
    if action not in ("start", "stop"):
        raise BadRequest(f'action must be "start" or "stop", not {action!r}')
    if path is not None and (not isinstance(path, str) or path == ""):
        raise BadRequest("path must be a non-empty string")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise BadRequest("max_bytes must be a positive integer")
    return action, path, max_bytes


# Prometheus text exposition format 0.0.4.
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str, bad: re.Pattern[str] = _NAME_BAD) -> str:
    cleaned = bad.sub("_", name) or "_"
    return "_" + cleaned if cleaned[0].isdigit() else cleaned


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def prometheus_text(metrics: list[Metric]) -> str:
    """``metrics`` in the Prometheus text format (names and label names made valid)."""
    lines: list[str] = []
    for metric in metrics:
        name = _metric_name(metric.name)
        kind = metric.kind if metric.kind in ("counter", "gauge") else "untyped"
        help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in metric.samples:
            if labels:
                pairs = ",".join(
                    f'{_metric_name(k, _LABEL_BAD)}="{_label_value(str(v))}"' for k, v in labels.items()
                )
                lines.append(f"{name}{{{pairs}}} {_sample_value(value)}")
            else:
                lines.append(f"{name} {_sample_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""
