"""The dashboard's Starlette application: routes, static files and access control.

``create_app`` wires the JSON routes (``_api``), the HTML pages (``_pages``) and
``static/`` together.  With a ``secret``, every route but ``/health`` requires it,
as a bearer token, a ``?token=`` query parameter or the cookie that such a query
sets (so that the pages' own fetches and links carry it without the script ever
seeing it).
"""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dsched.dashboard._api import JSONBytes, api_routes
from dsched.dashboard._pages import page_routes
from dsched.dashboard._source import DashboardSource

__all__ = ["COOKIE_NAME", "create_app"]

COOKIE_NAME = "dsched_dashboard"
STATIC_DIR = Path(__file__).parent / "static"
# Routes that need no secret: a load balancer's or a supervisor's liveness probe.
_OPEN_PATHS = frozenset({"/health"})


def create_app(source: DashboardSource, *, secret: str | None = None, refresh_ms: int = 1000) -> Starlette:
    """The dashboard app reading ``source``; pages poll every ``refresh_ms`` milliseconds."""
    if refresh_ms < 50:
        raise ValueError(f"refresh_ms must be at least 50, not {refresh_ms}")
    routes = [
        *api_routes(source),
        *page_routes(refresh_ms),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(_SameOriginPosts)]
    if secret is not None:
        if secret == "":
            raise ValueError("the dashboard secret must not be empty")
        middleware.insert(0, Middleware(_TokenAuth, secret=secret))
    return Starlette(routes=routes, middleware=middleware)


def _cookie_value(secret: str) -> str:
    # The cookie holds a digest of the secret, not the secret itself: it opens the
    # dashboard only, and a leaked cookie does not give away the scheduler's secret.
    return hmac.new(secret.encode(), b"dsched dashboard cookie", hashlib.sha256).hexdigest()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _matches(candidate: str, expected: bytes) -> bool:
    return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), expected)


class _TokenAuth:
    """401 for any request without the secret, except the open paths."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = secret.encode()
        self.cookie = _cookie_value(secret)
        self.cookie_bytes = self.cookie.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            if _matches(authorization[7:].strip(), self.secret):
                await self.app(scope, receive, send)
                return
        if self._cookie_ok(scope):
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")))
        token = query.get("token")
        if token is not None and _matches(token, self.secret):
            await self.app(scope, receive, self._with_cookie(scope, send))
            return
        response = JSONBytes({"error": "unauthorized: this dashboard needs its token"}, status_code=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="dsched dashboard"'
        await response(scope, receive, send)

    def _cookie_ok(self, scope: Scope) -> bool:
        raw = _header(scope, b"cookie")
        if raw is None:
            return False
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(raw)
        except Exception:  # a malformed Cookie header is no credential, not an error
            return False
        morsel = cookies.get(COOKIE_NAME)
        return morsel is not None and _matches(morsel.value, self.cookie_bytes)

    def _with_cookie(self, scope: Scope, send: Send) -> Send:
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE_NAME}={self.cookie}; Path=/; HttpOnly; SameSite=Strict{secure}"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        return send_with_cookie


class _SameOriginPosts:
    """403 for a POST that a browser sent from another site's page.

    The POST routes start profilers and write recordings; a page elsewhere must not
    be able to trigger them through a visitor's browser (without a secret nothing
    else would stop it).  Browsers send ``Origin`` with every cross-origin POST.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            origin = _header(scope, b"origin")
            host = _header(scope, b"host")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc != host):
                response = JSONBytes({"error": "cross-origin POST refused"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
