"""ASGI middleware: request ids, the authenticated principal, and one access-log line per request."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from app import metrics
from app.context import AppContext
from app.errors import DomainError, Unauthorized, send_error
from app.logging_setup import ACCESS_LOGGER, write_access_line
from app.services.auth.access import Credentials, Principal, cross_origin_refusal, header, identify

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_WORKSPACE_PATH_RE = re.compile(r"/(?:api/workspaces|w)/([A-Za-z0-9_-]{1,64})(?:/|$)")
# Paths that never resolve a user token: /metrics has its own token and must answer while the database is down.
NO_PRINCIPAL_PATHS = frozenset({"/metrics"})
access_log = structlog.get_logger(ACCESS_LOGGER)


def workspace_id_of(scope: Scope) -> str | None:
    """The workspace a request is about: the ``workspace_id`` path parameter, else ``/api/workspaces/<id>``
    or ``/w/<id>`` in the raw path (mounted apps see a rewritten ``path``)."""
    params = scope.get("path_params")
    if params and isinstance(params.get("workspace_id"), str):
        return params["workspace_id"]
    raw = scope.get("raw_path") or scope["path"].encode()
    if raw.startswith((b"/w/", b"/api/workspaces/")):
        match = _WORKSPACE_PATH_RE.match(raw.decode("latin-1"))
        if match:
            return match.group(1)
    return None


def _is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


class RequestContextMiddleware:
    """Gives every request an id (kept from ``X-Request-ID`` when sane), resolves who is calling (refusing
    cookie-authenticated unsafe requests from other origins), and logs one line per HTTP request without the
    query string (old links may still carry an ``access_token``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = (header(scope.get("headers", []), b"x-request-id") or b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        rid_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        try:
            scope["user"] = await self._principal(scope)
        except DomainError as exc:
            scope["user"] = None
            if scope["type"] == ScopeType.HTTP and scope["path"].startswith("/api/"):
                headers = {"x-request-id": request_id}
                if exc.status == 401:
                    headers["www-authenticate"] = "Bearer"
                await send_error(send, exc.status, exc.to_body(), headers)
                self._record(scope, exc.status, started, time.perf_counter())
                return
        if scope["user"] is not None:
            structlog.contextvars.bind_contextvars(user_id=scope["user"].user_id)
        workspace_id = workspace_id_of(scope)
        if workspace_id is not None:
            structlog.contextvars.bind_contextvars(workspace_id=workspace_id)
        if scope["type"] == ScopeType.WEBSOCKET:
            await self.app(scope, receive, send)
            return
        status = 0
        headers_at = 0.0

        async def send_with_id(message: Message) -> None:
            nonlocal status, headers_at
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = headers = [*message.get("headers", ()), rid_header]
                if _is_event_stream(headers):
                    headers_at = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # An event stream lasts as long as the client stays: its latency is the time to the headers.
            self._record(scope, status, started, time.perf_counter(), headers_at)

    @staticmethod
    def _record(scope: HTTPScope, status: int, started: float, ended: float, headers_at: float = 0.0) -> None:
        route = scope.get("path_template") or "unmatched"
        metrics.observe_http(scope["method"], route, status, (headers_at or ended) - started)
        fields = {
            "method": scope["method"],
            "path": scope.get("raw_path", b"").decode("latin-1") or scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round((ended - started) * 1000, 2),
        }
        if not write_access_line(fields):
            access_log.info("request", **fields)

    async def _principal(self, scope: Scope) -> Principal | None:
        if scope["path"] in NO_PRINCIPAL_PATHS:
            return None
        credentials = Credentials.of(scope)
        if credentials.token is None:
            return None
        ctx: AppContext = scope["app"].state.ctx
        principal = await identify(credentials, ctx.auth)
        if principal is None:
            raise Unauthorized("invalid or expired token", code="invalid_token")
        refusal = cross_origin_refusal(scope, credentials, ctx.settings)
        if refusal is not None:
            raise refusal
        return principal
