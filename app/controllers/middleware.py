"""The request middleware: one pure-ASGI layer for request ids, the caller, the API's sign-in requirement and
rate limit, the access log and the HTTP metrics.

One layer rather than a stack of them: every layer is one more coroutine and one more ``send`` wrapper per
request, and the sign-in requirement was an app-wide Litestar guard, which copies the route handler on every
request. Litestar runs it after routing, so ``scope["route_handler"]`` and ``scope["path_template"]`` are set.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Iterable
from typing import cast

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from app import metrics
from app.context import AppContext
from app.errors import DomainError, Unauthorized, send_error
from app.logging_setup import ACCESS_LOGGER, write_access_line
from app.services.auth.access import Credentials, Principal, cross_origin_refusal, header, identify
from app.services.auth.ratelimit import enforce
from app.streams.events.direct_http import direct_writer

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_WORKSPACE_PATH_RE = re.compile(r"/(?:api/workspaces|w)/([A-Za-z0-9_-]{1,64})(?:/|$)")
# Paths that never resolve a user token: /metrics has its own token and must answer while the database is down.
NO_PRINCIPAL_PATHS = frozenset({"/metrics"})
access_log = structlog.get_logger(ACCESS_LOGGER)
# Request ids: a random prefix per process and a counter (unique across processes, no system call per request).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique across hub processes."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


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


def _response_kind(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """(an event stream, a sized body) from a response's headers."""
    stream = sized = False
    for key, value in headers:
        if key == b"content-type":
            stream = value.startswith(b"text/event-stream")
        elif key == b"content-length":
            sized = True
    return stream, sized


class RequestContextMiddleware:
    """Per HTTP or WebSocket request:

    - an id (kept from ``X-Request-ID`` when sane), in the logs' context and the response's headers;
    - who is calling (refusing cookie-authenticated unsafe requests from other origins); ``/api`` routes
      without ``opt={"public": True}`` answer 401 to anonymous callers;
    - the per-token API rate limit (``CODEHUB_API_RATE_PER_MINUTE``) on authenticated ``/api/`` requests;
    - one access-log line and the HTTP metrics, without the query string (old links may carry an
      ``access_token``); an event stream's duration is its time to the headers.

    A response with a ``Content-Length`` goes out in one write (head and body) when the server offers
    ``codehub.direct_write`` (``codehub serve``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != ScopeType.HTTP and kind != ScopeType.WEBSOCKET:
            await self.app(scope, receive, send)
            return
        given = header(scope["headers"], b"x-request-id")
        request_id = given.decode("latin-1") if given is not None else ""
        if not _REQUEST_ID_RE.fullmatch(request_id):
            request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        rid_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        api = kind == ScopeType.HTTP and scope["path"].startswith("/api/")
        try:
            user = scope["user"] = await self._principal(scope)
            if user is None:
                handler = scope.get("route_handler")
                if api and handler is not None and not handler.opt.get("public"):
                    raise Unauthorized("authentication required: Bearer token or session cookie")
            elif api:
                ctx: AppContext = scope["app"].state.ctx
                if ctx.api_limit.enabled:
                    await enforce(ctx.rate_limiter, user.token_id, ctx.api_limit)
        except DomainError as exc:
            if api:
                headers = {**exc.headers, "x-request-id": request_id}
                if exc.status == 401:
                    headers["www-authenticate"] = "Bearer"
                await send_error(send, exc.status, exc.to_body(), headers)
                self._record(cast(HTTPScope, scope), exc.status, started, time.perf_counter())
                return
            scope["user"] = user = None
        if user is not None:
            structlog.contextvars.bind_contextvars(user_id=user.user_id)
        workspace_id = workspace_id_of(scope)
        if workspace_id is not None:
            structlog.contextvars.bind_contextvars(workspace_id=workspace_id)
        if kind == ScopeType.WEBSOCKET:
            await self.app(scope, receive, send)
            return
        status = 0
        headers_at = 0.0
        writer = direct_writer(scope)
        held: Message | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, headers_at, held
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = headers = [*message.get("headers", ()), rid_header]
                stream, sized = _response_kind(headers)
                if stream:
                    headers_at = time.perf_counter()
                elif sized and writer is not None:
                    held = message  # sent with the first part of the body, in one write
                    return
            elif held is not None and writer is not None:
                start, held = held, None
                with writer.corked():
                    await send(start)
                    await send(message)
                return
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(cast(HTTPScope, scope), status, started, time.perf_counter(), headers_at)

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
