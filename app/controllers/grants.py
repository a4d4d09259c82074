"""``/api/workspaces/{id}/grants``: the owner (or an admin) shares a workspace with users and groups.

Subdomain mode only: in path mode every call answers 409 with the reason. Grants and revocations are
audited, and each one tells every hub process (``workspace.access_changed``) so a revoked grantee's open
IDE and terminal connections close within seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.context import AppContext
from app.controllers.deps import error_responses
from app.errors import BadRequest
from app.schemas import Body
from app.services.auth.access import Principal, audit_entry
from app.services.workspaces.grants import GrantView

SubjectId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class GrantBody(Body):
    """Share with a user or a group, named by ``subject_id`` or by ``subject_name`` (one of them): ``use`` (IDE,
    terminal, files, exec) or ``view`` (read-only)."""

    subject_kind: Literal["user", "group"]
    level: Literal["use", "view"]
    subject_id: SubjectId | None = None
    subject_name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class Presence(msgspec.Struct, kw_only=True):
    """Someone connected to the workspace right now: IDE WebSockets and terminals, through any hub process."""

    user_id: int
    username: str
    connections: int


class GrantsOut(msgspec.Struct, kw_only=True):
    """A workspace's grants and who is connected to it."""

    grants: list[GrantView]
    present: list[Presence]


class GrantsController(Controller):
    """Who a workspace is shared with; only its owner or an admin may see or change it."""

    path = "/api/workspaces/{workspace_id:str}/grants"
    tags = ["sharing"]

    @get("/", operation_id="listWorkspaceGrants", responses=error_responses(401, 403, 404, 409))
    async def list_grants(self, ctx: AppContext, principal: Principal, workspace_id: str) -> GrantsOut:
        """The grants, users then groups, and who is connected now."""
        ctx.workspaces.grants.require_enabled()
        ws = await ctx.workspaces.get(principal, workspace_id)
        present = [
            Presence(user_id=user_id, username=name, connections=count)
            for user_id, name, count in await ctx.relay.presence.of(ws.id)
        ]
        return GrantsOut(grants=await ctx.workspaces.grants.of(ws.id), present=present)

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        operation_id="grantWorkspace",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def grant(
        self, request: Request[Any, Any, Any], data: GrantBody, ctx: AppContext, principal: Principal, workspace_id: str
    ) -> GrantView:
        """Share the workspace with a user or group, by id or by name (granting a subject again changes its
        level)."""
        grants = ctx.workspaces.grants
        grants.require_enabled()
        ws = await ctx.workspaces.get(principal, workspace_id)
        if (data.subject_id is None) == (data.subject_name is None):
            raise BadRequest("give subject_id or subject_name (one of them)", code="bad_subject")
        subject_id = data.subject_id or await grants.subject_named(data.subject_kind, data.subject_name or "")
        view = await grants.put(ws, data.subject_kind, subject_id, data.level, principal.user_id)
        await ctx.workspaces.access_changed(ws, subject_kind=data.subject_kind, subject_id=subject_id)
        details = {"subject_kind": data.subject_kind, "subject_id": subject_id, "level": data.level}
        await ctx.audit.record(
            audit_entry(
                request.scope, "workspace.grant", principal, workspace_id=ws.id, target=ws.name, details=details
            )
        )
        return view

    @delete(
        "/{subject_kind:str}/{subject_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="revokeWorkspaceGrant",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        ctx: AppContext,
        principal: Principal,
        workspace_id: str,
        subject_kind: Annotated[str, Parameter(description="user or group")],
        subject_id: Annotated[int, Parameter(ge=1, le=2**31 - 1)],
    ) -> None:
        """Stop sharing with one user or group; their open IDE and terminal connections close."""
        ctx.workspaces.grants.require_enabled()
        ws = await ctx.workspaces.get(principal, workspace_id)
        await ctx.workspaces.grants.revoke(ws.id, subject_kind, subject_id)
        await ctx.workspaces.access_changed(ws, subject_kind=subject_kind, subject_id=subject_id)
        details = {"subject_kind": subject_kind, "subject_id": subject_id}
        await ctx.audit.record(
            audit_entry(
                request.scope, "workspace.revoke", principal, workspace_id=ws.id, target=ws.name, details=details
            )
        )
