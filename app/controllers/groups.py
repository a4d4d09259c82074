"""``/api/admin/groups``: groups and their members (admins). Groups synced from the identity provider are
listed like local ones but refuse renames, deletes and member edits with 409 and the reason."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.schemas import Body
from app.services.auth.access import Principal, audit_entry
from app.services.groups.service import GroupView, MemberView

GroupName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@-]*$",
        description="letters, digits, space and . _ @ -, starting with a letter or digit",
    ),
]


GroupId = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="group id")]
UserId = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="user id")]


class GroupBody(Body):
    """A local group's name."""

    name: GroupName


async def _record_member(
    request: Request[Any, Any, Any], ctx: AppContext, principal: Principal, action: str, group_id: int, user_id: int
) -> None:
    """Audit a membership change (``group.member.add`` or ``.remove``)."""
    details = {"group_id": group_id, "user_id": user_id}
    await ctx.audit.record(audit_entry(request.scope, action, principal, details=details))


class AdminGroupsController(Controller):
    """List groups with member counts, manage local groups and their members (admin only)."""

    path = "/api/admin/groups"
    tags = ["admin"]
    guards = [requires_admin]

    @get("/", operation_id="adminListGroups", responses=error_responses(401, 403))
    async def list_groups(self, ctx: AppContext) -> list[GroupView]:
        """Every group (local and synced) with its member count."""
        return await ctx.groups.list_groups()

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        operation_id="adminCreateGroup",
        responses=error_responses(400, 401, 403, 409),
    )
    async def create(
        self, request: Request[Any, Any, Any], data: GroupBody, ctx: AppContext, principal: Principal
    ) -> GroupView:
        """Create a local group."""
        view = await ctx.groups.create(data.name)
        await ctx.audit.record(audit_entry(request.scope, "group.create", principal, target=view.name))
        return view

    @get("/{group_id:int}", operation_id="adminGetGroup", responses=error_responses(401, 403, 404))
    async def get_group(self, group_id: GroupId, ctx: AppContext) -> GroupView:
        """One group with its member count."""
        return await ctx.groups.get(group_id)

    @patch("/{group_id:int}", operation_id="adminRenameGroup", responses=error_responses(400, 401, 403, 404, 409))
    async def rename(
        self, request: Request[Any, Any, Any], group_id: GroupId, data: GroupBody, ctx: AppContext, principal: Principal
    ) -> GroupView:
        """Rename a local group (409 for a synced one)."""
        view = await ctx.groups.rename(group_id, data.name)
        await ctx.audit.record(
            audit_entry(request.scope, "group.rename", principal, target=view.name, details={"group_id": group_id})
        )
        return view

    @delete(
        "/{group_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="adminDeleteGroup",
        responses=error_responses(401, 403, 404, 409),
    )
    async def delete_group(
        self, request: Request[Any, Any, Any], group_id: GroupId, ctx: AppContext, principal: Principal
    ) -> None:
        """Delete a local group (409 for a synced one, or one a template or server is limited to)."""
        name = await ctx.groups.delete(group_id)
        await ctx.audit.record(
            audit_entry(request.scope, "group.delete", principal, target=name, details={"group_id": group_id})
        )

    @get("/{group_id:int}/members", operation_id="adminListGroupMembers", responses=error_responses(401, 403, 404))
    async def members(self, group_id: GroupId, ctx: AppContext) -> list[MemberView]:
        """The group's members, by username."""
        return await ctx.groups.members(group_id)

    @put(
        "/{group_id:int}/members/{user_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="adminAddGroupMember",
        responses=error_responses(401, 403, 404, 409),
    )
    async def add_member(
        self, request: Request[Any, Any, Any], group_id: GroupId, user_id: UserId, ctx: AppContext, principal: Principal
    ) -> None:
        """Add a user to a local group (409 for a synced one); takes effect on the user's next request."""
        await ctx.groups.add_member(group_id, user_id)
        await _record_member(request, ctx, principal, "group.member.add", group_id, user_id)

    @delete(
        "/{group_id:int}/members/{user_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="adminRemoveGroupMember",
        responses=error_responses(401, 403, 404, 409),
    )
    async def remove_member(
        self, request: Request[Any, Any, Any], group_id: GroupId, user_id: UserId, ctx: AppContext, principal: Principal
    ) -> None:
        """Remove a user from a local group (409 for a synced one); takes effect on the user's next request."""
        await ctx.groups.remove_member(group_id, user_id)
        await _record_member(request, ctx, principal, "group.member.remove", group_id, user_id)

    @get("/users/{user_id:int}", operation_id="adminListUserGroups", responses=error_responses(401, 403, 404))
    async def user_groups(self, user_id: UserId, ctx: AppContext) -> list[GroupView]:
        """The groups a user is in."""
        return await ctx.groups.groups_of(user_id)
