"""The app factory: routes, middleware, error handlers, OpenAPI, and the lifespan that serves the context.

To add a part: append its route handlers to ``ROUTES``; long-lived objects and background loops are built
and started in ``app.composition``, and handlers reach them as typed fields of ``AppContext``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp

from app.composition import compose
from app.controllers.admin_users import AdminUsersController
from app.controllers.ai import AIController
from app.controllers.api_docs import openapi_config, swagger_assets
from app.controllers.audit import AdminAuditController, AuditController
from app.controllers.auth import AuthController
from app.controllers.dashboard import DASHBOARD_ROUTES
from app.controllers.deps import BASE_DEPENDENCIES
from app.controllers.error_responses import EXCEPTION_HANDLERS
from app.controllers.events import EventsController
from app.controllers.files import FilesController
from app.controllers.grants import GrantsController
from app.controllers.groups import AdminGroupsController
from app.controllers.health import health, ready
from app.controllers.lifecycle import LifecycleController
from app.controllers.middleware import RequestContextMiddleware
from app.controllers.ops import metrics_endpoint
from app.controllers.patches import PatchController
from app.controllers.quotas import AdminGroupQuotasController, AdminQuotasController, OwnQuotaController
from app.controllers.servers import ServersController
from app.controllers.sso import SsoController
from app.controllers.templates import AdminTemplatesController, TemplatesController
from app.controllers.workspaces import WorkspacesController
from app.logging_setup import configure_logging
from app.settings import Settings, load_settings
from app.streams.relay.front import WorkspaceFront
from app.version import hub_version

ROUTES: list[Any] = [
    health,
    ready,
    metrics_endpoint,
    AuthController,
    SsoController,
    AdminUsersController,
    WorkspacesController,
    GrantsController,
    EventsController,
    AIController,
    LifecycleController,
    ServersController,
    TemplatesController,
    AdminTemplatesController,
    AdminGroupQuotasController,
    AdminQuotasController,
    AdminGroupsController,
    OwnQuotaController,
    FilesController,
    PatchController,
    AuditController,
    AdminAuditController,
    *DASHBOARD_ROUTES,
    swagger_assets,
]


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
        dependencies=BASE_DEPENDENCIES,
        middleware=[DefineMiddleware(RequestContextMiddleware)],  # also the sign-in requirement and API rate limit
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings}),
        openapi_config=openapi_config(hub_version()),
        logging_config=None,
        debug=False,
    )
