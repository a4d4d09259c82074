"""ASGI middleware: request ids, the authenticated principal, and one access-log line per request."""

from __future__ import annotations

import re
import time
import uuid
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import DomainError, Unauthorized
from app.services.auth import Principal

SESSION_COOKIE = "codehub_session"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = structlog.get_logger("codehub.access")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def credentials_from_scope(scope: Scope) -> str | None:
    """The raw token a request presents: Bearer header, then ``?access_token=``, then the session cookie."""
    auth = _header(scope, b"authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth
    query = scope.get("query_string", b"")
    if b"access_token=" in query:
        for key, value in parse_qsl(query.decode("latin-1")):
            if key == "access_token":
                return value
    cookie_header = _header(scope, b"cookie")
    if cookie_header and SESSION_COOKIE in cookie_header:
        try:
            jar = SimpleCookie(cookie_header)
        except CookieError:
            return None
        if SESSION_COOKIE in jar:
            return jar[SESSION_COOKIE].value
    return None


def request_id_of(scope: Scope) -> str:
    """The request id stored by ``RequestContextMiddleware``."""
    return scope.get("state", {}).get("request_id", "")


def _json_error(status: int, body: bytes, request_id: str, extra: list[tuple[bytes, bytes]]) -> list[Message]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class RequestContextMiddleware:
    """Gives every request an id (kept from ``X-Request-ID`` when sane), resolves who is calling, and logs
    one line per HTTP request without the query string (it may carry ``access_token``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        rid_header = (b"x-request-id", request_id.encode())
        try:
            scope["user"] = await self._principal(scope)
        except DomainError as exc:
            scope["user"] = None
            if scope["type"] == "http" and scope["path"].startswith("/api/"):
                body = msgspec.json.encode(exc.to_body())
                for message in _json_error(exc.status, body, request_id, [(b"www-authenticate", b"Bearer")]):
                    await send(message)
                return
        if scope["user"] is not None:
            structlog.contextvars.bind_contextvars(user_id=scope["user"].user_id)
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    async def _principal(self, scope: Scope) -> Principal | None:
        raw = credentials_from_scope(scope)
        if not raw:
            return None
        ctx: Any = scope["app"].state.get("ctx")
        if ctx is None:
            raise Unauthorized("the hub is starting", code="starting")
        return await ctx.auth.resolve(raw)
