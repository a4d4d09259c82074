"""The app factory: routes, middleware, error mapping, OpenAPI, and the lifespan that serves the context.

To add a part: append its route handlers to ``ROUTES``; long-lived objects and background loops are built
and started in ``app.composition``, and handlers reach them as typed fields of ``AppContext``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.types import ASGIApp

from app.composition import compose
from app.controllers.admin_users import AdminUsersController
from app.controllers.ai import AIController
from app.controllers.audit import AdminAuditController, AuditController
from app.controllers.auth import AuthController
from app.controllers.dashboard import DASHBOARD_ROUTES
from app.controllers.deps import BASE_DEPENDENCIES, requires_user
from app.controllers.events import EventsController
from app.controllers.files import FilesController
from app.controllers.health import health, ready
from app.controllers.lifecycle import LifecycleController
from app.controllers.middleware import RequestContextMiddleware
from app.controllers.ops import ApiRateLimitMiddleware, metrics_endpoint
from app.controllers.patches import PatchController
from app.controllers.servers import ServersController
from app.controllers.workspaces import WorkspacesController
from app.errors import DomainError
from app.logging_setup import configure_logging
from app.settings import Settings, load_settings
from app.streams.relay.front import WorkspaceFront

log = logging.getLogger("codehub")

ROUTES: list[Any] = [
    health,
    ready,
    metrics_endpoint,
    AuthController,
    AdminUsersController,
    WorkspacesController,
    EventsController,
    AIController,
    LifecycleController,
    ServersController,
    FilesController,
    PatchController,
    AuditController,
    AdminAuditController,
    *DASHBOARD_ROUTES,
]


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _on_domain_error(_: Request, exc: DomainError) -> Response[Any]:
    return _error_response(exc.status, exc.to_body(), exc.headers)


def _snake(name: str) -> str:
    name = name.removesuffix("Exception")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "http_error"


def _on_http_exception(_: Request, exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        detail = str(exc.detail)
        errors = exc.extra if isinstance(exc.extra, list) else []
        if any("malformed" in str(e.get("message", "")).lower() for e in errors if isinstance(e, dict)):
            return _error_response(400, {"error": "invalid_json", "detail": "the body is not valid JSON"})
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        if first.get("message"):
            where = f" at {first['key']}" if first.get("key") else ""
            detail = f"{first['message']}{where}"
        return _error_response(400, {"error": "invalid_request", "detail": detail, "errors": errors})
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        401: "unauthorized",
        403: "forbidden",
        429: "rate_limited",
    }.get(exc.status_code, _snake(type(exc).__name__))
    detail = str(exc.detail)
    if isinstance(exc.__cause__, SerializationException):
        code, detail = "invalid_json", f"the body is not valid JSON: {detail}"
    if exc.status_code >= 500:
        log.error("http exception %s: %s", exc.status_code, detail)
        return _error_response(exc.status_code, {"error": "internal_error", "detail": "internal error"})
    return _error_response(exc.status_code, {"error": code, "detail": detail}, exc.headers)


def _on_unexpected(request: Request, exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(500, {"error": "internal_error", "detail": "internal error"})


def _make_lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with compose(settings) as ctx:
            routed = app.asgi_handler
            # /w/… (relay) and /ws/workspaces/… (terminal) skip Litestar's routing: see app.streams.relay.front
            app.asgi_handler = cast(ASGIApp, WorkspaceFront(routed, ctx.relay))
            app.state.ctx = ctx
            try:
                yield
            finally:
                app.asgi_handler = routed

    return lifespan


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the Litestar application for ``settings`` (default: from the environment)."""
    settings = settings or load_settings()
    configure_logging(settings)
    return Litestar(
        route_handlers=ROUTES,
        lifespan=[_make_lifespan(settings)],
        guards=[requires_user],
        dependencies=BASE_DEPENDENCIES,
        middleware=[DefineMiddleware(RequestContextMiddleware), DefineMiddleware(ApiRateLimitMiddleware)],
        exception_handlers={
            DomainError: _on_domain_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings}),
        openapi_config=OpenAPIConfig(
            title="code-hub",
            version="0.1.0",
            description="Self-hosted hub for browser development workspaces. SSE-first.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        logging_config=None,
        debug=False,
    )
