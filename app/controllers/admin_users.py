"""``/api/admin/users``: user management for admins."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.schemas import UserCreate, UserOut, UserUpdate
from app.services.auth.access import Principal, audit_entry


class AdminUsersController(Controller):
    """Create, list and change users (admin only)."""

    path = "/api/admin/users"
    tags = ["admin"]
    guards = [requires_admin]

    @get("/", operation_id="adminListUsers", responses=error_responses(401, 403))
    async def list_users(
        self,
        ctx: AppContext,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
        offset: Annotated[int, Parameter(ge=0, le=1_000_000)] = 0,
    ) -> list[UserOut]:
        """All users, by id."""
        return [UserOut.of(u) for u in await ctx.auth.list_users(limit=limit, offset=offset)]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        operation_id="adminCreateUser",
        responses=error_responses(400, 401, 403, 409, 422),
    )
    async def create_user(
        self, request: Request[Any, Any, Any], data: UserCreate, ctx: AppContext, principal: Principal
    ) -> UserOut:
        """Create a user with a password and a role."""
        user = await ctx.auth.create_user(data.username, data.password, data.role)
        await ctx.audit.record(
            audit_entry(
                request.scope, "admin.user.create", principal, target=user.username, details={"role": user.role}
            )
        )
        return UserOut.of(user)

    @patch("/{user_id:int}", operation_id="adminUpdateUser", responses=error_responses(400, 401, 403, 404, 409, 422))
    async def update_user(
        self, request: Request[Any, Any, Any], user_id: int, data: UserUpdate, ctx: AppContext, principal: Principal
    ) -> UserOut:
        """Change a user's role, disabled flag or password (409: yourself, or the last admin, losing admin)."""
        user = await ctx.auth.update_user(
            user_id, role=data.role, disabled=data.disabled, password=data.password, actor_id=principal.user_id
        )
        changed = [k for k in ("role", "disabled", "password") if getattr(data, k) is not None]
        await ctx.audit.record(
            audit_entry(
                request.scope, "admin.user.update", principal, target=user.username, details={"changed": changed}
            )
        )
        return UserOut.of(user)
