"""``/api/workspaces``: workspace records (create, list, read, update, delete)."""

from __future__ import annotations

from typing import Annotated, Any, cast

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import Parameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.context import AppContext
from app.controllers.deps import error_responses, provide_principal
from app.errors import Unprocessable
from app.schemas import WorkspaceCreate, WorkspaceOut, WorkspacePage, WorkspaceUpdate
from app.services.auth.access import Level, Principal, audit_entry
from app.services.workspaces.records import WorkspaceService


class WorkspacesController(Controller):
    """Workspace records; the caller sees only their own (admins: everyone's with ``?all=true``)."""

    path = "/api/workspaces"
    tags = ["workspaces"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        operation_id="createWorkspace",
        responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: WorkspaceCreate,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> WorkspaceOut:
        """Create a workspace record in state ``created`` (from a template: within its bounds, its image checked
        to be on the server or pullable)."""
        plan = None
        if data.template is not None:
            if data.image is not None:
                raise Unprocessable("a workspace made from a template runs the template's image", code="image_set")
            plan = await ctx.templates.plan(
                data.template, cpu=data.cpu, memory_mb=data.memory_mb, for_user=principal.user_id
            )
        server_id = await ctx.provisioning.place_new(
            data.server_id,
            plan.server_labels if plan else None,
            for_user=principal.user_id,
            cpu=plan.cpu if plan else data.cpu,
            memory_mb=plan.memory_mb if plan else data.memory_mb,
        )
        if plan is not None:
            await ctx.template_images.check_for_create(plan.image, server_id, plan.template_id)
        ws, clone_url = await workspaces.create(
            principal,
            name=data.name,
            image=plan.image if plan else data.image,
            git_url=data.git_url,
            git_ref=data.git_ref,
            git_depth=data.git_depth,
            server_id=server_id,
            cpu=plan.cpu if plan else data.cpu,
            memory_mb=plan.memory_mb if plan else data.memory_mb,
            template=(plan.template_id, plan.version) if plan else None,
            idle_timeout=plan.idle_timeout if plan else None,
        )
        await ctx.audit.record(
            audit_entry(request.scope, "workspace.create", principal, workspace_id=ws.id, target=ws.name)
        )
        ws = await ctx.provisioning.after_create(ws, clone_url)
        return WorkspaceOut.of(ws)

    @get("/", operation_id="listWorkspaces", responses=error_responses(400, 401, 403))
    async def list_workspaces(
        self,
        request: Request[Any, Any, Any],
        all_users: Annotated[bool, QueryParameter(name="all", description="admins: everyone's workspaces")] = False,
        states: Annotated[
            list[str] | None, QueryParameter(name="state", description="filter by state (repeatable)")
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Parameter(max_length=200)] = None,
    ) -> Response[WorkspacePage]:
        """A page of workspaces, newest first.

        Cached per process (encoded) until a write of the owner, at most ``CODEHUB_WORKSPACE_LIST_CACHE_TTL`` s.
        """
        # No injected dependencies: two of them make Litestar resolve them in a task group on every request.
        principal = await provide_principal(request)
        workspaces: WorkspaceService = request.app.state.ctx.workspaces
        body = await workspaces.list_encoded(
            principal, _encode_page, all_users=all_users, states=states or (), limit=limit, cursor=cursor
        )
        # The body is a WorkspacePage already encoded (cached); the annotation keeps the OpenAPI schema.
        return Response(cast("WorkspacePage", body), media_type="application/json")

    @get("/{workspace_id:str}", operation_id="getWorkspace", responses=error_responses(401, 404))
    async def get_workspace(
        self, workspace_id: str, principal: Principal, workspaces: WorkspaceService
    ) -> WorkspaceOut:
        """One workspace."""
        return WorkspaceOut.of(await workspaces.get(principal, workspace_id, Level.VIEW))

    @patch(
        "/{workspace_id:str}",
        operation_id="updateWorkspace",
        responses=error_responses(400, 401, 403, 404, 409, 422),
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        data: WorkspaceUpdate,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> WorkspaceOut:
        """Rename a workspace or change its image/resources (applied at the next start; a templated workspace's
        resources stay within its template version's bounds and its image is the template's), or its repository
        while it is not running and holds no clone yet (cloned at once)."""
        current = await workspaces.get(principal, workspace_id)
        if current.template_id is not None and current.template_version is not None:
            if data.image is not None:
                raise Unprocessable("a workspace made from a template runs the template's image", code="image_set")
            if data.cpu is not None or data.memory_mb is not None:
                await ctx.templates.check_bounds(
                    current.template_id, current.template_version, data.cpu, data.memory_mb
                )
        change = None
        if data.git_url is not None or data.git_ref is not None:
            change = await ctx.provisioning.check_repository_change(principal, current, data.git_url, data.git_ref)
        ws = await workspaces.update(
            principal, workspace_id, name=data.name, image=data.image, cpu=data.cpu, memory_mb=data.memory_mb
        )
        if change is not None:
            ws = await ctx.provisioning.change_repository(ws, change)
        await ctx.audit.record(
            audit_entry(request.scope, "workspace.update", principal, workspace_id=ws.id, target=ws.name)
        )
        return WorkspaceOut.of(ws)

    @delete(
        "/{workspace_id:str}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="deleteWorkspace",
        responses=error_responses(401, 404, 409),
    )
    async def delete_workspace(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        ctx: AppContext,
        principal: Principal,
        purge: Annotated[bool, Parameter(description="also delete the workspace's files")] = False,
    ) -> None:
        """Delete a workspace (its container first)."""
        ws = await ctx.provisioning.delete(principal, workspace_id, purge=purge)
        await ctx.audit.record(
            audit_entry(
                request.scope,
                "workspace.delete",
                principal,
                workspace_id=ws.id,
                target=ws.name,
                details={"purge": purge},
            )
        )


def _encode_page(rows: list[Any], next_cursor: str | None) -> bytes:
    return msgspec.json.encode(WorkspacePage(WorkspaceOut.of_rows(rows), next_cursor))
