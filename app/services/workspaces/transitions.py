"""The persistence half of the workspace lifecycle: rows read and moved by compare-and-set, events published.

``Transitions`` holds what every transition shares (``row``, ``cas``, ``publish``, ``drop_status``, the
start ``heartbeat``, activity ``touch``, the storage of a workspace); ``Lifecycle``
(``app.services.workspaces.lifecycle``) builds the state machine on it. Each transition is one
``UPDATE … WHERE state IN (…)`` that also bumps ``generation`` when asked: only the caller whose update
matched goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker
from app.errors import NotFound
from app.events import EventPublisher
from app.models import Workspace, WorkspaceState, utcnow
from app.services.files.storage import WorkspaceStorage
from app.services.quotas.service import QuotaService
from app.services.runtime.engines import Engines
from app.services.runtime.ide_secret import IdeSecrets
from app.services.templates.service import TemplateService
from app.services.workspaces.records import WorkspaceService, publish_lifecycle
from app.services.workspaces.servers import ServerService
from app.settings import Settings

log = logging.getLogger(__name__)

CLONING = "cloning"
ACTIVITY_WRITE_EVERY = 15.0
HEARTBEAT_EVERY = 5.0
STORAGE_CACHE_TTL = 30.0


class Transitions:
    """Rows, compare-and-set transitions and lifecycle events of workspaces (the base of ``Lifecycle``)."""

    def __init__(
        self,
        sessionmaker: SessionMaker,
        settings: Settings,
        events: EventPublisher,
        engines: Engines,
        workspaces: WorkspaceService,
        servers: ServerService,
        tasks: TaskGroup,
        templates: TemplateService | None = None,
        quotas: QuotaService | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.events = events
        self.engines = engines
        self.workspaces = workspaces
        self.servers = servers
        self._tasks = tasks
        self.templates = templates
        self.quotas = quotas
        self.starts: dict[str, anyio.Event] = {}
        self._clones: dict[str, anyio.Event] = {}
        self._activity: dict[str, float] = {}
        self._storages: dict[str, tuple[float, WorkspaceStorage]] = {}
        self._beats: dict[str, float] = {}
        self.listeners: list[Callable[[Workspace, str], None]] = []
        self.ide_secrets = IdeSecrets.from_settings(settings)

    async def storage_for(self, ws: Workspace) -> WorkspaceStorage:
        """The workspace's files, as the runtime that holds (or will hold) them provides them."""
        storage = (await self.engines.for_workspace(ws)).storage(ws.id, image=ws.image)
        self._storages[ws.id] = (anyio.current_time() + STORAGE_CACHE_TTL, storage)
        return storage

    async def storage_by_id(self, workspace_id: str) -> WorkspaceStorage:
        """``storage_for`` by id (no visibility check), remembered briefly: placement rarely changes."""
        expires, storage = self._storages.get(workspace_id, (0.0, None))
        if storage is not None and expires > anyio.current_time():
            return storage
        if len(self._storages) > 10_000:
            self._storages.clear()
        return await self.storage_for(await self.row(workspace_id))

    async def row(self, workspace_id: str) -> Workspace:
        """The current row, no visibility check (404 when gone)."""
        async with self.sessionmaker() as session:
            ws = await session.get(Workspace, workspace_id)
        if ws is None:
            raise NotFound(f"no workspace {workspace_id!r}", code="workspace_not_found")
        return ws

    async def cas(
        self,
        workspace_id: str,
        states: tuple[WorkspaceState, ...],
        *,
        generation: int | None = None,
        bump: bool = False,
        guard: Callable[[AsyncSession, str], Awaitable[None]] | None = None,
        not_cloning: bool = False,
        **values: Any,
    ) -> Workspace | None:
        """``UPDATE … WHERE id AND state IN states [AND generation]``; the updated row, or None if no match.

        ``guard(session, id)`` runs first in the same transaction (it may lock and raise to refuse).
        ``not_cloning`` (and any move to ``starting``) also requires that no clone is under way."""
        query = update(Workspace).where(Workspace.id == workspace_id, Workspace.state.in_(states))
        if generation is not None:
            query = query.where(Workspace.generation == generation)
        if not_cloning or values.get("state") == WorkspaceState.STARTING:
            query = query.where(func.coalesce(Workspace.state_reason, "") != CLONING)
        values["updated_at"] = utcnow()
        if bump:
            values["generation"] = Workspace.generation + 1
        async with self.sessionmaker() as session:
            if guard is not None:
                await guard(session, workspace_id)
            result = await session.scalars(query.values(**values).returning(Workspace))
            ws = result.one_or_none()
            await session.commit()
        if ws is not None:
            self.workspaces.changed(ws.owner_id)
        return ws

    async def publish(self, ws: Workspace, type_: str, **extra: Any) -> None:
        """Publish a lifecycle event (a hub outage is logged, never raised), then tell ``listeners``."""
        await publish_lifecycle(self.events, ws, type_, **extra)
        for listener in self.listeners:
            listener(ws, type_)

    async def drop_status(self, workspace_id: str) -> None:
        """Forget cached resource numbers (every lifecycle change)."""
        try:
            await self.engines.cache.drop(workspace_id)
        except Exception as exc:  # a Redis hiccup must not fail a transition
            log.warning("status cache drop failed for %s: %s", workspace_id, exc)

    def beat_written(self, workspace_id: str) -> None:
        """``updated_at`` was just written (a transition): the next ``heartbeat`` is due in ``HEARTBEAT_EVERY``."""
        self._beats[workspace_id] = anyio.current_time()

    async def heartbeat(self, ws: Workspace) -> None:
        """Keep a long start (clone, pull) fresh so reconcilers elsewhere do not take it for abandoned."""
        now = anyio.current_time()
        if now - self._beats.get(ws.id, -1e9) < HEARTBEAT_EVERY:
            return
        self._beats[ws.id] = now
        async with self.sessionmaker() as session:
            await session.execute(
                update(Workspace)
                .where(Workspace.id == ws.id, Workspace.generation == ws.generation)
                .values(updated_at=utcnow())
            )
            await session.commit()

    # -- activity ------------------------------------------------------------------------------------------

    async def touch(self, workspace_id: str, source: str) -> None:
        """Record activity (relay, terminal, exec, api); written at most every 15 s per workspace."""
        now = anyio.current_time()
        if now - self._activity.get(workspace_id, -1e9) < ACTIVITY_WRITE_EVERY:
            return
        self._activity[workspace_id] = now
        async with self.sessionmaker() as session:
            await session.execute(
                update(Workspace)
                .where(Workspace.id == workspace_id, Workspace.state == WorkspaceState.RUNNING)
                .values(last_activity_at=utcnow(), last_activity_source=source)
            )
            await session.commit()
