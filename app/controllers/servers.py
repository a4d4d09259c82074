"""``/api/admin/servers`` and ``/api/admin/workspaces/{id}/place``: Docker hosts, Kubernetes namespaces and
placement (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.schemas import Body, ShortId, WorkspaceOut
from app.services.auth.access import Principal, audit_entry
from app.services.runtime.server_kinds import AccessResult, Room
from app.services.templates.drafts import GroupIds
from app.services.workspaces.servers import ServerEdit, ServerLoad

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Labels = dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], Annotated[str, msgspec.Meta(max_length=255)]]


class ServerCreate(Body):
    """Where workspaces can be placed: a Docker engine (``docker_url``) or, with ``kind: "kubernetes"``, a
    namespace of a cluster (``kubeconfig``: a file path on the hub or ``in-cluster``; ``namespace``)."""

    name: Name
    kind: Literal["docker", "kubernetes"] = "docker"
    docker_url: Annotated[str, msgspec.Meta(min_length=8, max_length=255)] | None = None
    kubeconfig: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    namespace: Annotated[str, msgspec.Meta(min_length=1, max_length=63)] | None = None
    max_workspaces: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    public_host: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    labels: Labels = msgspec.field(default_factory=dict)
    allowed_groups: GroupIds = msgspec.field(default_factory=list)


class ServerPatch(Body):
    """Changes to a server (fields left out stay). ``draining``: no new workspaces, running ones stay;
    ``public_host: ""`` clears it; ``labels`` replaces them all."""

    name: Name | None = None
    labels: Annotated[Labels, msgspec.Meta(max_length=50)] | None = None
    public_host: Annotated[str, msgspec.Meta(max_length=255, pattern=r"^[A-Za-z0-9.:\[\]-]*$")] | None = None
    max_workspaces: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    enabled: bool | None = None
    draining: bool | None = None


class ServerGroupsBody(Body):
    """The groups whose members' workspaces may be placed on a server (empty: everyone)."""

    allowed_groups: GroupIds


class ServerOut(msgspec.Struct):
    """A server with its load."""

    id: str
    name: str
    kind: str
    docker_url: str | None
    kubeconfig: str | None
    namespace: str | None
    max_workspaces: int
    public_host: str | None
    labels: dict[str, str]
    is_default: bool
    enabled: bool
    draining: bool
    created_at: datetime
    placed: int
    running: int
    allowed_groups: list[int]

    @classmethod
    def of(cls, load: ServerLoad) -> ServerOut:
        """Shape a server and its counts."""
        s = load.server
        return cls(
            s.id,
            s.name,
            s.kind,
            s.docker_url,
            s.kubeconfig,
            s.namespace,
            s.max_workspaces,
            s.public_host,
            dict(s.labels or {}),
            s.is_default,
            s.enabled,
            s.draining,
            s.created_at,
            load.placed,
            load.running,
            list(s.allowed_groups or []),
        )


class ServerTest(msgspec.Struct, kw_only=True):
    """Answer of a server check. ``version`` is the engine's or API server's (``docker_version`` repeats it
    for Docker servers); a Kubernetes server adds the namespace's ``access`` (a ``SelfSubjectAccessReview``
    each; ``ok`` is false while a required one is denied), the ``nodes`` the hub may list, and the room its
    ResourceQuota leaves (``quota``, null without one)."""

    ok: bool
    kind: str
    version: str
    docker_version: str
    api_version: str
    latency_ms: float
    error: str | None
    namespace: str | None = None
    access: list[AccessResult] | None = None
    nodes: int | None = None
    quota: Room | None = None


class PlaceBody(Body):
    """Where to move a workspace that is not running."""

    server_id: ShortId
    leave_files: bool = False
    """Place it without moving its files (they stay on the old engine): for an engine that no longer answers."""


class ServersController(Controller):
    """Register, list, test and remove servers (Docker engines, Kubernetes namespaces); place workspaces (admin
    only)."""

    path = "/api/admin"
    tags = ["admin"]
    guards = [requires_admin]

    @post(
        "/servers",
        status_code=HTTP_201_CREATED,
        operation_id="adminCreateServer",
        responses=error_responses(400, 401, 403, 409, 422),
    )
    async def create(
        self, request: Request[Any, Any, Any], data: ServerCreate, ctx: AppContext, principal: Principal
    ) -> ServerOut:
        """Register a Docker engine (``unix://…`` or ``tcp://…``) or a Kubernetes namespace (422 with the reason
        for fields of the other kind or a kubeconfig the hub cannot use; its content is never echoed)."""
        load = await ctx.servers.create(
            name=data.name,
            kind=data.kind,
            docker_url=data.docker_url,
            kubeconfig=data.kubeconfig,
            namespace=data.namespace,
            max_workspaces=data.max_workspaces,
            public_host=data.public_host,
            labels=data.labels,
            allowed_groups=data.allowed_groups,
        )
        await ctx.audit.record(audit_entry(request.scope, "server.create", principal, target=data.name))
        return ServerOut.of(load)

    @get("/servers", operation_id="adminListServers", responses=error_responses(401, 403))
    async def list_servers(self, ctx: AppContext) -> list[ServerOut]:
        """Every server with how many workspaces are placed there and how many run."""
        return [ServerOut.of(load) for load in await ctx.servers.loads()]

    @patch(
        "/servers/{server_id:str}",
        operation_id="adminEditServer",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def edit(
        self, request: Request[Any, Any, Any], server_id: str, data: ServerPatch, ctx: AppContext, principal: Principal
    ) -> ServerOut:
        """Rename, relabel, change the public host, the capacity, enable/disable or drain a server."""
        change = msgspec.convert(msgspec.structs.asdict(data), ServerEdit)
        load, changed = await ctx.servers.edit(server_id, change)
        if changed:
            details = {key: getattr(load.server, key) for key in changed}
            await ctx.audit.record(
                audit_entry(request.scope, "server.edit", principal, target=load.server.name, details=details)
            )
        return ServerOut.of(load)

    @put(
        "/servers/{server_id:str}/groups",
        operation_id="adminSetServerGroups",
        responses=error_responses(400, 401, 403, 404, 422),
    )
    async def set_groups(
        self,
        request: Request[Any, Any, Any],
        server_id: str,
        data: ServerGroupsBody,
        ctx: AppContext,
        principal: Principal,
    ) -> ServerOut:
        """Limit the server to groups (empty: everyone); workspaces placed there already stay."""
        load = await ctx.servers.set_allowed_groups(server_id, data.allowed_groups)
        details = {"allowed_groups": load.server.allowed_groups}
        await ctx.audit.record(
            audit_entry(request.scope, "server.groups", principal, target=load.server.name, details=details)
        )
        return ServerOut.of(load)

    @post(
        "/servers/{server_id:str}/test",
        status_code=HTTP_200_OK,
        operation_id="adminTestServer",
        responses=error_responses(401, 403, 404),
    )
    async def test(self, server_id: str, ctx: AppContext) -> ServerTest:
        """Ask the server for its version (and a Kubernetes namespace for its access, nodes and quota); ``ok=false``
        with the error when it does not answer or lacks a permission workspaces need."""
        server = (await ctx.servers.get(server_id)).server
        report = await ctx.servers.test(server_id)
        info, cluster = report.info, report.cluster
        return ServerTest(
            ok=info.ok,
            kind=server.kind,
            version=info.version,
            docker_version=info.version if cluster is None else "",
            api_version=info.api_version,
            latency_ms=info.latency_ms,
            error=info.error,
            namespace=cluster.namespace if cluster else None,
            access=cluster.access if cluster else None,
            nodes=cluster.nodes if cluster else None,
            quota=cluster.quota if cluster else None,
        )

    @delete(
        "/servers/{server_id:str}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="adminDeleteServer",
        responses=error_responses(401, 403, 404, 409),
    )
    async def delete_server(
        self, request: Request[Any, Any, Any], server_id: str, ctx: AppContext, principal: Principal
    ) -> None:
        """Unregister a server (409 while workspaces are placed on it)."""
        await ctx.servers.delete(server_id)
        await ctx.audit.record(audit_entry(request.scope, "server.delete", principal, target=server_id))

    @post(
        "/workspaces/{workspace_id:str}/place",
        status_code=HTTP_200_OK,
        operation_id="adminPlaceWorkspace",
        responses=error_responses(401, 403, 404, 409, 422, 502, 503),
    )
    async def place(
        self, request: Request[Any, Any, Any], workspace_id: str, data: PlaceBody, ctx: AppContext, principal: Principal
    ) -> WorkspaceOut:
        """Move a stopped (or created/failed) workspace to another server, its volume verified by a manifest."""
        placed = await ctx.servers.place(workspace_id, data.server_id, leave_files=data.leave_files)
        manifest = placed.manifest
        details = (
            {"manifest_sha256": manifest.sha256, "entries": manifest.files, "bytes": manifest.size}
            if manifest
            else {"leave_files": data.leave_files}
        )
        await ctx.audit.record(
            audit_entry(
                request.scope,
                "workspace.place",
                principal,
                workspace_id=workspace_id,
                target=data.server_id,
                details=details,
            )
        )
        return WorkspaceOut.of(placed.workspace)
