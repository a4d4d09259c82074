"""Dependencies and guards shared by controllers: the app context, the caller, services, error docs."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from app.context import AppContext
from app.errors import Forbidden, Unauthorized
from app.schemas import ErrorBody
from app.services.auth.access import Principal
from app.services.workspaces.records import WorkspaceService

ERROR_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict with the current state",
    412: "Precondition failed",
    413: "Body or file too large",
    415: "Unsupported media type",
    422: "Invalid values",
    429: "Rate limited",
    502: "Upstream failed",
    503: "Service unavailable",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI response docs for the given error statuses (all share ``ErrorBody``)."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            description=ERROR_DESCRIPTIONS[status],
            examples=[Example(value={"error": "code", "detail": "what went wrong"})],
        )
        for status in statuses
    }


def outcome_response(body: type[Any]) -> dict[int, ResponseSpec]:
    """OpenAPI doc of the 200 a ``?wait=true`` start or restart answers with (the outcome, not 202)."""
    return {200: ResponseSpec(data_container=body, description="with wait=true: the outcome (running or failed)")}


async def requires_user(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: ``/api`` requests must carry valid credentials (handlers opt out with ``opt={"public": True}``).

    Not app-wide: ``RequestContextMiddleware`` enforces the same for every ``/api/`` route (a Litestar guard
    costs a copy of the route handler per request); ``requires_admin`` builds on it. Guards are ``async def``:
    Litestar runs a sync guard in a worker thread.
    """
    if handler.opt.get("public") or not connection.scope["path"].startswith("/api"):
        return
    if connection.scope.get("user") is None:
        raise Unauthorized("authentication required: Bearer token or session cookie")


async def requires_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: the caller must be an admin."""
    await requires_user(connection, handler)
    if not connection.scope["user"].is_admin:
        raise Forbidden("admin role required", code="admin_required")


async def provide_ctx(state: State) -> AppContext:
    """The application context built in the lifespan."""
    ctx: AppContext = state.ctx
    return ctx


async def provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The authenticated caller (guards have already refused anonymous requests)."""
    principal: Principal | None = request.scope.get("user")
    if principal is None:
        raise Unauthorized("authentication required")
    return principal


async def provide_workspaces(state: State) -> WorkspaceService:
    """The workspace record service."""
    workspaces: WorkspaceService = state.ctx.workspaces
    return workspaces


BASE_DEPENDENCIES = {
    "ctx": Provide(provide_ctx),
    "principal": Provide(provide_principal),
    "workspaces": Provide(provide_workspaces),
}
