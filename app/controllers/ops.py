"""Operations edges: ``GET /metrics`` (Prometheus), the per-token API rate limit, and their startup wiring.

``/metrics`` is open unless ``CODEHUB_METRICS_TOKEN`` is set (Prometheus scrapers rarely carry user tokens;
set it with ``authorization: {credentials: …}`` in the scrape config). It never touches a user's token,
so it still answers, reporting ``codehub_dependency_up{name="database"} 0``, while the database is down.
"""

from __future__ import annotations

import hmac
import importlib.metadata
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, get
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from app import metrics
from app.context import AppContext
from app.errors import TooManyRequests, Unauthorized
from app.services.auth.ratelimit import RateLimiter, api_limit, create_rate_limiter, enforce
from app.services.workspaces import monitoring

METRICS_PATH = "/metrics"
RATE_LIMITER = "rate_limiter"
API_LIMIT = "api_limit"


def rate_limiter_of(ctx: AppContext) -> RateLimiter:
    """The process's rate limiter (Redis-backed when Redis is configured), built by ``ops_startup``."""
    return ctx.extras[RATE_LIMITER]


@get(METRICS_PATH, opt={"public": True}, include_in_schema=False, name="metrics")
async def metrics_endpoint(request: Request[Any, Any, Any], ctx: AppContext) -> Response[bytes]:
    """Prometheus text exposition of this hub process."""
    token = ctx.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("GET /metrics needs the CODEHUB_METRICS_TOKEN bearer token", code="metrics_token")
    await monitoring.refresh(ctx.sessionmaker, ctx.ready_checks)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def ops_startup(ctx: AppContext) -> None:
    """Build the rate limiter, expose the event hub's counters, and undo both at shutdown."""
    limiter, close = create_rate_limiter(ctx.settings)
    ctx.extras[RATE_LIMITER] = limiter
    ctx.extras[API_LIMIT] = api_limit(ctx.settings)
    stats = getattr(ctx.events, "stats", None)
    forget = metrics.HUB_STATS.add(stats) if stats is not None else None
    try:
        version = importlib.metadata.version("code-hub")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    metrics.INFO.labels(version, getattr(ctx.events, "backend", "unknown")).set(1)

    async def undo_at_shutdown() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if forget is not None:
                forget()
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()

    ctx.tasks.start_soon(undo_at_shutdown)


class ApiRateLimitMiddleware:
    """429 for an authenticated ``/api`` caller over ``CODEHUB_API_RATE_PER_MINUTE`` (bucket per token).

    Runs inside ``RequestContextMiddleware`` (it needs ``scope["user"]``); anonymous requests pass (login has
    its own limit).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if user is not None and scope["type"] == "http" and scope["path"].startswith("/api/"):
            ctx: Any = scope["app"].state.get("ctx")
            limit = ctx.extras.get(API_LIMIT) if ctx is not None else None
            if limit is not None and limit.enabled:
                try:
                    await enforce(ctx.extras[RATE_LIMITER], user.token_id, limit)
                except TooManyRequests as exc:
                    await _send_error(send, exc)
                    return
        await self.app(scope, receive, send)


async def _send_error(send: Send, exc: TooManyRequests) -> None:
    body = msgspec.json.encode(exc.to_body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
