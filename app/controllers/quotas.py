"""``/api/admin/users/{id}/quota`` and ``/api/admin/groups/{id}/quota`` (admins: read, set, drop a user's or a
group's quota) and ``/api/auth/quota`` (anyone signed in: their own limits and usage)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.params import Parameter

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.schemas import Body
from app.services.auth.access import Principal, audit_entry
from app.services.quotas.service import GroupQuotaView, Limits, QuotaView

Count = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
GroupId = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="group id")]


class QuotaBody(Body):
    """A user's own limits; a field left out or ``null`` is unlimited. (Not named ``workspaces`` etc.: a body
    field named like a dependency turns Litestar's validation error into a 500.)"""

    max_workspaces: Count | None = None
    max_running: Count | None = None
    max_cpu: Annotated[float, msgspec.Meta(ge=0, le=100_000)] | None = None
    max_memory_mb: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] | None = None


def _limits(data: QuotaBody) -> Limits:
    return Limits(
        max_workspaces=data.max_workspaces,
        max_running=data.max_running,
        max_cpu=data.max_cpu,
        max_memory_mb=data.max_memory_mb,
    )


async def _record(
    request: Request[Any, Any, Any],
    ctx: AppContext,
    principal: Principal,
    action: str,
    target: str,
    limits: Limits | None = None,
) -> None:
    """Audit an admin's quota change on ``target`` (``user:<id>`` or ``group:<id>``), with the limits set."""
    details = msgspec.to_builtins(limits) if limits is not None else {}
    await ctx.audit.record(audit_entry(request.scope, action, principal, target=target, details=details))


class AdminQuotasController(Controller):
    """A user's quota (admin only); their usage beside it."""

    path = "/api/admin/users/{user_id:int}/quota"
    tags = ["admin"]
    guards = [requires_admin]

    @get("/", operation_id="adminGetUserQuota", responses=error_responses(401, 403, 404))
    async def get_quota(self, user_id: int, ctx: AppContext) -> QuotaView:
        """The user's effective limits, their source (user, group, default), their own quota and usage."""
        return await ctx.quotas.view(user_id)

    @put("/", operation_id="adminSetUserQuota", responses=error_responses(400, 401, 403, 404, 422))
    async def set_quota(
        self, request: Request[Any, Any, Any], user_id: int, data: QuotaBody, ctx: AppContext, principal: Principal
    ) -> QuotaView:
        """Give the user a quota of their own (replaces the default and their groups' for them)."""
        limits = _limits(data)
        view = await ctx.quotas.set_user_quota(user_id, limits)
        await _record(request, ctx, principal, "admin.quota.set", f"user:{user_id}", limits)
        return view

    @delete("/", status_code=200, operation_id="adminDropUserQuota", responses=error_responses(401, 403, 404))
    async def drop_quota(
        self, request: Request[Any, Any, Any], user_id: int, ctx: AppContext, principal: Principal
    ) -> QuotaView:
        """Drop the user's own quota: their groups' or the hub's default applies again."""
        view = await ctx.quotas.clear_user_quota(user_id)
        await _record(request, ctx, principal, "admin.quota.drop", f"user:{user_id}")
        return view


class AdminGroupQuotasController(Controller):
    """A group's quota (admin only): its members without a quota of their own get the most generous of their
    groups' quotas, limit by limit."""

    path = "/api/admin/groups/{group_id:int}/quota"
    tags = ["admin"]
    guards = [requires_admin]

    @get("/", operation_id="adminGetGroupQuota", responses=error_responses(401, 403, 404))
    async def get_quota(self, group_id: GroupId, ctx: AppContext) -> GroupQuotaView:
        """The group's quota (``quota: null`` when it sets none)."""
        return await ctx.quotas.group_view(group_id)

    @put("/", operation_id="adminSetGroupQuota", responses=error_responses(400, 401, 403, 404, 422))
    async def set_quota(
        self, request: Request[Any, Any, Any], group_id: GroupId, data: QuotaBody, ctx: AppContext, principal: Principal
    ) -> GroupQuotaView:
        """Give the group a quota (a limit left out or ``null`` is unlimited for its members)."""
        limits = _limits(data)
        view = await ctx.quotas.set_group_quota(group_id, limits)
        await _record(request, ctx, principal, "admin.quota.set", f"group:{group_id}", limits)
        return view

    @delete("/", status_code=200, operation_id="adminDropGroupQuota", responses=error_responses(401, 403, 404))
    async def drop_quota(
        self, request: Request[Any, Any, Any], group_id: GroupId, ctx: AppContext, principal: Principal
    ) -> GroupQuotaView:
        """Drop the group's quota: its members fall back to their other groups' or the hub's default."""
        view = await ctx.quotas.clear_group_quota(group_id)
        await _record(request, ctx, principal, "admin.quota.drop", f"group:{group_id}")
        return view


class OwnQuotaController(Controller):
    """The caller's own quota and usage."""

    path = "/api/auth/quota"
    tags = ["auth"]

    @get("/", operation_id="myQuota", responses=error_responses(401))
    async def mine(self, ctx: AppContext, principal: Principal) -> QuotaView:
        """Your limits (``null`` = unlimited), where they come from, and what you use now."""
        return await ctx.quotas.view(principal.user_id)
