"""The dashboard's HTML pages: static shells that their scripts fill from the JSON routes.

Each page is rendered once when the app is built.  Links and asset URLs are
relative, so the dashboard also works behind a proxy that serves it under a
prefix.  Scripts are files only (no inline script), so a strict
Content-Security-Policy holds; settings reach them as ``data-`` attributes.
"""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dsched._version import __version__

__all__ = ["NAV", "page_routes", "render_page"]

# (path, label) of the navigation bar, in order.
NAV = (("status", "Status"), ("workers", "Workers"), ("profile", "Profile"), ("profile-server", "Scheduler profile"))

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_WORKERS_TABLE = '<div class="table-wrap"><table id="workers-table" class="table"><thead></thead><tbody></tbody></table></div>'

_STATUS = f"""
<section id="summary" class="cards" aria-label="Summary"></section>
<section class="panel">
  <h2>Task stream <small>last 10 s, one row per worker</small></h2>
  <div id="task-stream-wrap"><svg id="task-stream" class="stream" role="img" aria-label="Task stream"></svg></div>
</section>
<section class="panel">
  <h2>Task groups <small id="task-groups-note"></small></h2>
  <div class="legend" id="task-groups-legend"></div>
  <div id="task-groups"></div>
</section>
<section class="panel">
  <h2>Workers <small id="workers-note"></small> <a class="more" href="workers">all workers</a></h2>
  {_WORKERS_TABLE}
</section>
"""

_WORKERS = f"""
<section class="panel">
  <h2>Workers <small id="workers-note"></small></h2>
  <div class="toolbar"><input id="workers-filter" type="search" placeholder="Filter by address or name"></div>
  {_WORKERS_TABLE}
</section>
"""

_WINDOW = """
  <label>Window
    <select id="window">
      <option value="10">last 10 s</option><option value="60" selected>last 1 min</option>
      <option value="600">last 10 min</option><option value="all">all</option>
    </select>
  </label>"""

_DOWNLOADS = """
  <span class="spacer"></span>
  <label class="check"><input id="live" type="checkbox" checked> live</label>
  <a id="download-speedscope" class="button" download>speedscope</a>
  <a id="download-collapsed" class="button" download>collapsed</a>"""

_PROFILE = f"""
<section class="panel">
  <h2>Profile <small>the workers' task threads, sampled</small></h2>
  <div class="toolbar">{_WINDOW}
  <label>Worker <select id="worker"><option value="">all workers</option></select></label>
  <label>Task prefix <input id="prefix" list="prefixes" placeholder="all tasks" autocomplete="off"></label>
  <datalist id="prefixes"></datalist>{_DOWNLOADS}
  </div>
  <p id="profile-info" class="info"></p>
  <div id="flamegraph" class="flamegraph"></div>
</section>
"""

_PROFILE_SERVER = f"""
<section class="panel">
  <h2>Scheduler profile <small>the scheduler's event loop, sampled</small></h2>
  <div class="toolbar">{_WINDOW}{_DOWNLOADS}
  </div>
  <p id="profile-info" class="info"></p>
  <div id="flamegraph" class="flamegraph"></div>
</section>
<section class="panel">
  <h2>Capture <small>trace the scheduler's event loop and download the file</small></h2>
  <div class="toolbar">
    <label>Seconds <input id="capture-seconds" type="number" min="1" max="300" value="5"></label>
    <button id="capture-cprofile" class="button" data-kind="cprofile">cProfile</button>
    <button id="capture-viztracer" class="button" data-kind="viztracer">VizTracer</button>
    <span id="capture-info" class="info"></span>
  </div>
</section>
<section class="panel">
  <h2>Record <small>the scheduler's core events, to a file on its machine, for <code>dsched replay</code></small></h2>
  <div class="toolbar">
    <label>At most <input id="record-max-mb" type="number" min="1" placeholder="default" title="empty: the scheduler's own bound (dsched scheduler --record-max-bytes); a request may lower it, never raise it"> MB</label>
    <button id="record-start" class="button">Start recording</button>
    <button id="record-stop" class="button" disabled>Stop</button>
    <span id="record-info" class="info"></span>
  </div>
</section>
"""

# page name -> (title, body, scripts after dashboard.js)
_PAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "status": ("Status", _STATUS, ("workers.js", "status.js")),
    "workers": ("Workers", _WORKERS, ("workers.js",)),
    "profile": ("Profile", _PROFILE, ("flamegraph.js",)),
    "profile-server": ("Scheduler profile", _PROFILE_SERVER, ("flamegraph.js", "record.js")),
}


def render_page(page: str, refresh_ms: int) -> str:
    """The HTML of ``page`` (one of the keys of the navigation bar)."""
    title, body, scripts = _PAGES[page]
    version = escape(__version__)
    active = ' class="active" aria-current="page"'
    links = "".join(
        f'<a href="{path}"{active if path == page else ""}>{escape(label)}</a>' for path, label in NAV
    )
    tags = "".join(f'<script src="static/{name}?v={version}"></script>' for name in ("dashboard.js", *scripts))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · dsched</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/dashboard.css?v={version}">
</head>
<body data-page="{page}" data-refresh-ms="{refresh_ms}">
<nav id="nav"><span class="brand">dsched</span>{links}<span class="spacer"></span><span id="connection" class="connection"></span></nav>
<main>{body}</main>
<div id="tooltip" class="tooltip" hidden></div>
{tags}
</body>
</html>
"""


def page_routes(refresh_ms: int) -> list[BaseRoute]:
    """``/`` (a redirect to ``/status``) and one route per page."""
    rendered = {page: render_page(page, refresh_ms) for page in _PAGES}

    async def root(request: Request) -> Response:
        # Relative, so that a proxy's prefix is kept.
        return RedirectResponse("status", status_code=302)

    def serve(page: str) -> Route:
        html = rendered[page]

        async def endpoint(request: Request) -> Response:
            return HTMLResponse(html, headers=_HEADERS)

        return Route(f"/{page}", endpoint, name=f"page-{page}")

    return [Route("/", root), *(serve(page) for page in _PAGES)]
