"""Operations edges: ``GET /metrics`` (Prometheus) and the per-token API rate limit.

``/metrics`` is open unless ``CODEHUB_METRICS_TOKEN`` is set (Prometheus scrapers rarely carry user tokens;
set it with ``authorization: {credentials: …}`` in the scrape config). It never touches a user's token,
so it still answers, reporting ``codehub_dependency_up{name="database"} 0``, while the database is down.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from app.context import AppContext
from app.errors import TooManyRequests, Unauthorized, send_error
from app.services.auth.ratelimit import enforce
from app.services.workspaces import monitoring

METRICS_PATH = "/metrics"


@get(METRICS_PATH, opt={"public": True}, include_in_schema=False, name="metrics")
async def metrics_endpoint(request: Request[Any, Any, Any], ctx: AppContext) -> Response[bytes]:
    """Prometheus text exposition of this hub process."""
    token = ctx.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("GET /metrics needs the CODEHUB_METRICS_TOKEN bearer token", code="metrics_token")
    await monitoring.refresh(ctx.sessionmaker, ctx.ready_checks, ctx.engines)
    # Litestar appends the charset to text/* media types itself: pass the type without it.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8"))


class ApiRateLimitMiddleware:
    """429 for an authenticated ``/api`` caller over ``CODEHUB_API_RATE_PER_MINUTE`` (bucket per token).

    Runs inside ``RequestContextMiddleware`` (it needs ``scope["user"]``); anonymous requests pass (login has
    its own limit).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if user is not None and scope["type"] == ScopeType.HTTP and scope["path"].startswith("/api/"):
            ctx: AppContext = scope["app"].state.ctx
            if ctx.api_limit.enabled:
                try:
                    await enforce(ctx.rate_limiter, user.token_id, ctx.api_limit)
                except TooManyRequests as exc:
                    await send_error(send, exc.status, exc.to_body(), exc.headers)
                    return
        await self.app(scope, receive, send)
