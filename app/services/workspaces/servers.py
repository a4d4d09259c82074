"""Servers (admin): register, list with load, edit, drain, test, delete, limit to groups, and place
workspaces on them. A server is a Docker engine or a Kubernetes namespace (``kind``); placement chooses among
both by labels and room: ``max_workspaces`` for every server and, for a Kubernetes one, what the namespace's
ResourceQuota leaves (pods, CPU, memory).

A draining server takes no new workspaces (automatic placement skips it, naming it is a 422) while the ones
placed there keep running, starting and being watched; a disabled one is also left out of checks and
reconciliation, so it cannot be disabled while workspaces run on it.

A server limited to groups (``allowed_groups`` not empty) takes only workspaces whose owner is in one of them:
automatic placement skips it for others, and asking for it by id is a 403 with the reason. Admins are not
exempt (an admin's own workspace follows the same rule; an admin moving someone's workspace is checked
against the owner)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import anyio
import anyio.to_thread
import msgspec
from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError

from app.db import SessionMaker
from app.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, Unprocessable
from app.events import EventPublisher
from app.models import Server, Workspace, WorkspaceState, utcnow
from app.services.groups.limits import admits, checked_group_ids, member_group_ids
from app.services.runtime.docker_move import Manifest, MoveProgress, move_volume
from app.services.runtime.engines import Engines
from app.services.runtime.server_kinds import Room, ServerReport, check_target
from app.services.workspaces.records import publish_lifecycle

ACTIVE_STATES = (WorkspaceState.STARTING, WorkspaceState.RUNNING, WorkspaceState.STOPPING)
PLACEABLE_STATES = (WorkspaceState.CREATED, WorkspaceState.STOPPED, WorkspaceState.FAILED)


@dataclass(slots=True)
class ServerLoad:
    """A server row with how many workspaces are placed there and how many are running."""

    server: Server
    placed: int
    running: int

    @property
    def has_room(self) -> bool:
        """True while fewer workspaces are placed than the server takes."""
        return self.server.enabled and not self.server.draining and self.placed < self.server.max_workspaces


class ServerEdit(msgspec.Struct, frozen=True, kw_only=True):
    """Changes to a server; ``None`` keeps a field (``public_host=""`` clears it)."""

    name: str | None = None
    labels: dict[str, str] | None = None
    public_host: str | None = None
    max_workspaces: int | None = None
    enabled: bool | None = None
    draining: bool | None = None


class ServerService:
    """Admin operations on servers and workspace placement."""

    def __init__(self, sessionmaker: SessionMaker, engines: Engines, events: EventPublisher) -> None:
        self._sessionmaker = sessionmaker
        self._engines = engines
        self._events = events

    async def create(
        self,
        *,
        name: str,
        kind: str = "docker",
        docker_url: str | None = None,
        kubeconfig: str | None = None,
        namespace: str | None = None,
        max_workspaces: int = 50,
        public_host: str | None = None,
        labels: dict[str, str] | None = None,
        allowed_groups: list[int] | None = None,
    ) -> ServerLoad:
        """Register a Docker engine (``unix://`` or ``tcp://`` URL) or a Kubernetes namespace (a kubeconfig
        on the hub or ``in-cluster``); names are unique, the address is checked (422 with the reason)."""
        target = await anyio.to_thread.run_sync(
            functools.partial(check_target, kind, docker_url=docker_url, kubeconfig=kubeconfig, namespace=namespace)
        )
        server = Server(
            name=name,
            kind=target.kind,
            docker_url=target.docker_url,
            kubeconfig=target.kubeconfig,
            namespace=target.namespace,
            max_workspaces=max_workspaces,
            public_host=public_host,
            labels=labels or {},
        )
        async with self._sessionmaker() as session:
            server.allowed_groups = await checked_group_ids(session, allowed_groups or [])
            session.add(server)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"a server named {name!r} exists", code="name_taken") from None
        self._engines.server_added(target.kind)
        return ServerLoad(server, 0, 0)

    async def loads(self) -> list[ServerLoad]:
        """Every server with its placed and running counts, by name."""
        running = func.sum(case((Workspace.state.in_(ACTIVE_STATES), 1), else_=0))
        query = (
            select(Server, func.count(Workspace.id), running)
            .outerjoin(Workspace, Workspace.server_id == Server.id)
            .group_by(Server.id)
            .order_by(Server.name)
        )
        async with self._sessionmaker() as session:
            rows = (await session.execute(query)).all()
        return [ServerLoad(server, int(placed or 0), int(active or 0)) for server, placed, active in rows]

    async def get(self, server_id: str) -> ServerLoad:
        """One server with its counts (404 when unknown)."""
        for load in await self.loads():
            if load.server.id == server_id:
                return load
        raise NotFound(f"no server {server_id!r}", code="server_not_found")

    async def test(self, server_id: str) -> ServerReport:
        """Ask the server for its version and time the round trip; for a Kubernetes server also the
        namespace's access, the node count and the quota's room."""
        server = (await self.get(server_id)).server
        runtime = None
        if self._engines.probes.needs_runtime(server):
            runtime = await self._engines.for_server(server_id)
        return await self._engines.probes.report(server, runtime)

    async def set_allowed_groups(self, server_id: str, allowed_groups: list[int]) -> ServerLoad:
        """Limit a server to groups (an empty list: everyone). Workspaces already placed there stay."""
        async with self._sessionmaker() as session:
            row = await session.get(Server, server_id)
            if row is None:
                raise NotFound(f"no server {server_id!r}", code="server_not_found")
            row.allowed_groups = await checked_group_ids(session, allowed_groups)
            await session.commit()
        return await self.get(server_id)

    async def edit(self, server_id: str, change: ServerEdit) -> tuple[ServerLoad, list[str]]:
        """Apply ``change``; the server and the names of the fields that changed. 409 for a taken name, or for
        disabling a server that still runs workspaces (drain it and stop or move them first)."""
        load = await self.get(server_id)
        wanted = {k: v for k, v in msgspec.structs.asdict(change).items() if v is not None}
        if wanted.get("public_host") == "":
            wanted["public_host"] = None
        changed = [k for k, v in wanted.items() if getattr(load.server, k) != v]
        if "enabled" in changed and not wanted["enabled"] and load.running:
            raise Conflict(
                f"{load.running} workspaces run on server {load.server.name!r}; drain it and stop or move them "
                "before disabling it",
                code="server_busy",
            )
        if changed:
            async with self._sessionmaker() as session:
                row = await session.get(Server, server_id)
                if row is None:
                    raise NotFound(f"no server {server_id!r}", code="server_not_found")
                for key in changed:
                    setattr(row, key, wanted[key])
                try:
                    await session.commit()
                except IntegrityError:
                    raise Conflict(f"a server named {wanted['name']!r} exists", code="name_taken") from None
        if "public_host" in changed:
            await self._engines.forget(server_id)  # the next start dials the new address
        if wanted.get("enabled") and "enabled" in changed:
            self._engines.server_added(load.server.kind)
        return await self.get(server_id), changed

    async def _member_of(self, user_id: int | None) -> frozenset[int] | None:
        if user_id is None:
            return None
        async with self._sessionmaker() as session:
            return await member_group_ids(session, user_id)

    async def delete(self, server_id: str) -> None:
        """Unregister a server; 409 while workspaces are placed on it."""
        load = await self.get(server_id)
        if load.placed:
            raise Conflict(
                f"{load.placed} workspaces are placed on server {load.server.name!r}; move or delete them first",
                code="server_in_use",
            )
        async with self._sessionmaker() as session:
            row = await session.get(Server, server_id)
            if row is not None:
                await session.delete(row)
                await session.commit()
        await self._engines.forget(server_id)

    async def choose(
        self,
        server_id: str | None = None,
        labels: dict[str, str] | None = None,
        *,
        for_user: int | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
    ) -> str:
        """The server for a new placement: the one asked for, else the least-loaded with room (503 if none).

        With ``labels`` (a template's allowed servers) only servers carrying all of them qualify; with
        ``for_user`` (the workspace's owner) only servers whose group limit lets that user in (403 for one
        asked for by id). A Kubernetes server has room while its namespace's quota leaves a pod and, when
        given, ``cpu`` cores and ``memory_mb`` (checked against requests and limits alike); one asked for by id
        without room is a 422."""
        member_of = await self._member_of(for_user)
        if server_id is not None:
            try:
                load = await self.get(server_id)
            except NotFound:
                raise Unprocessable(f"no server {server_id!r}", code="unknown_server") from None
            if not load.server.enabled:
                raise Unprocessable(f"server {load.server.name!r} is disabled", code="server_disabled")
            if load.server.draining:
                raise Unprocessable(
                    f"server {load.server.name!r} is draining and takes no new workspaces; pick another server "
                    "or leave it out",
                    code="server_draining",
                )
            if labels and not _has_labels(load.server, labels):
                raise Unprocessable(
                    f"server {load.server.name!r} lacks the labels this template needs ({_label_text(labels)}); "
                    "pick another server or leave it out",
                    code="server_not_allowed",
                )
            if member_of is not None and not admits(load.server.allowed_groups, member_of):
                raise Forbidden(
                    f"server {load.server.name!r} is limited to groups the workspace's owner is not in; "
                    "pick another server or leave it out",
                    code="server_not_allowed_for_groups",
                )
            room = await self._engines.probes.room(load.server)
            if room is not None and not room.fits(cpu, memory_mb):
                raise Unprocessable(
                    f"the namespace quota of server {load.server.name!r} leaves no room for this workspace "
                    f"({_room_text(room)}); pick another server or leave it out",
                    code="server_full",
                )
            return server_id
        labelled = [load for load in await self.loads() if load.has_room and _has_labels(load.server, labels or {})]
        fitting = await self._with_room(labelled, cpu, memory_mb)
        loads = [ld for ld in fitting if member_of is None or admits(ld.server.allowed_groups, member_of)]
        if fitting and not loads:
            raise Forbidden(
                "every server with room is limited to groups the workspace's owner is not in; ask an admin",
                code="no_server_for_groups",
            )
        if not loads and labels:
            raise ServiceUnavailable(
                f"no server with the labels this template needs ({_label_text(labels)}) has room; an admin can "
                "label a server or change the template",
                code="no_capacity",
            )
        if not loads:
            total = len(await self.loads())
            raise ServiceUnavailable(
                f"no server has room for another workspace ({total} registered, all full, disabled or "
                "draining); an admin can raise max_workspaces or a namespace's quota, or register a server",
                code="no_capacity",
            )
        best = min(loads, key=lambda ld: (ld.running, ld.placed / max(ld.server.max_workspaces, 1), ld.server.name))
        return best.server.id

    async def _with_room(self, loads: list[ServerLoad], cpu: float | None, memory_mb: int | None) -> list[ServerLoad]:
        """``loads`` whose quota (Kubernetes servers) leaves room, all asked at once."""
        rooms: dict[str, Room | None] = {}

        async def ask(load: ServerLoad) -> None:
            rooms[load.server.id] = await self._engines.probes.room(load.server)

        async with anyio.create_task_group() as tg:
            for load in loads:
                tg.start_soon(ask, load)
        return [ld for ld in loads if (room := rooms.get(ld.server.id)) is None or room.fits(cpu, memory_mb)]

    async def place(self, workspace_id: str, server_id: str, *, leave_files: bool = False) -> Placement:
        """Move a workspace that is not running to another server (whose group limit lets its owner in).

        Its volume goes with it when the server is another engine: copied engine to engine, verified by a
        manifest, and only then is the workspace switched and the old volume removed (``workspace.moving``
        events report the copy). A failed copy leaves the workspace whole where it was. ``leave_files``
        switches without the volume (it stays on the old engine): for an engine that no longer answers."""
        async with self._sessionmaker() as session:
            current = await session.get(Workspace, workspace_id)
        if current is None:
            raise NotFound(f"no workspace {workspace_id!r}", code="workspace_not_found")
        await self.choose(server_id, for_user=current.owner_id, cpu=current.cpu, memory_mb=current.memory_mb)
        if current.state not in PLACEABLE_STATES:
            raise Conflict(f"workspace is {current.state}; stop it before placing it", code="workspace_busy")
        kind = await self._engines.kind_of_server(server_id)
        moving = current.server_id is not None and current.server_id != server_id and not leave_files
        if moving and current.server_id and not await self._engines.moves_files(current.server_id, server_id):
            raise Unprocessable(
                "the hub moves a workspace's files only from one Docker server to another; place it with "
                "leave_files=true to move it without them (they stay where they are)",
                code="cross_kind_move",
            )
        switched: list[Workspace] = []

        async def switch(_manifest: Manifest | None) -> bool:
            async with self._sessionmaker() as session:
                result = await session.scalars(
                    update(Workspace)
                    .where(
                        Workspace.id == workspace_id,
                        Workspace.state.in_(PLACEABLE_STATES),
                        Workspace.generation == current.generation,
                    )
                    .values(
                        server_id=server_id,
                        runtime=kind,
                        container_id=None,
                        endpoint=None,
                        generation=Workspace.generation + 1,
                        updated_at=utcnow(),
                    )
                    .returning(Workspace)
                )
                switched.extend(result)
                await session.commit()
            return bool(switched)

        async def progress(step: MoveProgress) -> None:
            await publish_lifecycle(
                self._events,
                current,
                "workspace.moving",
                server_id=server_id,
                bytes_done=step.bytes_done,
                files_done=step.files_done,
            )

        manifest: Manifest | None = None
        if current.server_id is not None and current.server_id != server_id and not leave_files:
            source = await self._engines.for_server(current.server_id)
            target = await self._engines.for_server(server_id)
            manifest = await move_volume(
                source, target, workspace_id, image=current.image, progress=progress, switch=switch
            )
        elif not await switch(None):
            raise Conflict("the workspace changed while it was placed; try again", code="workspace_changed")
        ws = switched[0]
        extra = {"manifest_sha256": manifest.sha256, "files": manifest.files} if manifest else {}
        await publish_lifecycle(self._events, ws, "workspace.placed", server_id=server_id, **extra)
        return Placement(ws, manifest)


@dataclass(slots=True)
class Placement:
    """A placed workspace and, when its volume moved, the verified manifest of what moved."""

    workspace: Workspace
    manifest: Manifest | None


def _has_labels(server: Server, labels: dict[str, str]) -> bool:
    own = server.labels or {}
    return all(own.get(key) == value for key, value in labels.items())


def _room_text(room: Room) -> str:
    parts = [
        f"{name} {value:g}"
        for name, value in (("pods", room.pods), ("cpu", room.cpu), ("memory_mb", room.memory_mb))
        if value is not None
    ]
    return "left: " + ", ".join(parts)


def _label_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
