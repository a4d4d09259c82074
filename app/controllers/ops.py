"""Operations edge: ``GET /metrics`` (Prometheus); the per-token API rate limit is in ``app.controllers.middleware``.

``/metrics`` is open unless ``CODEHUB_METRICS_TOKEN`` is set (Prometheus scrapers rarely carry user tokens;
set it with ``authorization: {credentials: …}`` in the scrape config). It never touches a user's token,
so it still answers, reporting ``codehub_dependency_up{name="database"} 0``, while the database is down.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from app.context import AppContext
from app.errors import Unauthorized
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
