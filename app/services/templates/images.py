"""A template's image on the servers: where it is, the check before a workspace is created, admin pre-pulls.

Pre-pull progress goes to the ``admin`` topic: ``template.pull.started``, ``template.pull.progress`` (the
engine's pull status, at most twice a second per server), then ``template.pull.done`` or
``template.pull.failed`` per server, all carrying the same ``pull_id``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from sqlalchemy import select

from app.db import SessionMaker
from app.errors import DomainError, Unprocessable
from app.events import ADMIN_TOPIC, EventPublisher
from app.models import RuntimeKind, Server, new_id
from app.services.runtime.base import ImageStore
from app.services.runtime.engines import Engines
from app.settings import Settings

log = logging.getLogger(__name__)


class ServerImage(msgspec.Struct, kw_only=True):
    """Whether one server holds an image (``present`` None when the engine could not be asked)."""

    server_id: str
    server_name: str
    present: bool | None
    error: str | None = None


class PullStarted(msgspec.Struct, kw_only=True):
    """A pre-pull under way: follow ``pull_id`` on the admin topic."""

    pull_id: str
    image: str
    server_ids: list[str]


class TemplateImages:
    """Image presence and pre-pulls on the registered servers."""

    def __init__(
        self, sessionmaker: SessionMaker, settings: Settings, engines: Engines, events: EventPublisher, tasks: TaskGroup
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._engines = engines
        self._events = events
        self._tasks = tasks

    async def _servers(self, server_ids: list[str] | None = None) -> list[Server]:
        query = select(Server).where(Server.enabled.is_(True)).order_by(Server.name)
        if server_ids:
            query = query.where(Server.id.in_(server_ids))
        async with self._sessionmaker() as session:
            return list(await session.scalars(query))

    async def _store(self, server_id: str) -> ImageStore | None:
        runtime = await self._engines.for_server(server_id)
        return runtime if isinstance(runtime, ImageStore) else None

    async def where(self, image: str) -> list[ServerImage]:
        """Every enabled server and whether it holds ``image`` now."""
        found: list[ServerImage] = []
        for server in await self._servers():
            try:
                store = await self._store(server.id)
                present = True if store is None else await store.has_image(image)
                found.append(ServerImage(server_id=server.id, server_name=server.name, present=present))
            except DomainError as exc:
                found.append(ServerImage(server_id=server.id, server_name=server.name, present=None, error=exc.detail))
        return found

    async def check_for_create(self, image: str, server_id: str | None, template_id: str) -> None:
        """Refuse at once (422) a workspace whose image is not on its server while pulling is off."""
        if server_id is None or self._settings.pull_images:
            return  # hub-wide runtimes (local processes) run no image; a missing image is pulled at start
        store = await self._store(server_id)
        if store is None or await store.has_image(image):
            return
        async with self._sessionmaker() as session:
            server = await session.get(Server, server_id)
        name = server.name if server is not None else server_id
        by_hand = (
            "load it onto every node of that cluster"
            if server is not None and server.kind == RuntimeKind.KUBERNETES
            else f"`docker pull {image}` on that server"
        )
        raise Unprocessable(
            f"image {image} is not on server {name!r} and the hub does not pull images: pre-pull it "
            f"(POST /api/admin/templates/{template_id}/pull, or {by_hand}) "
            "or ask an admin to set CODEHUB_PULL_IMAGES=true",
            code="image_missing",
        )

    async def pull(self, template_id: str, image: str, server_ids: list[str] | None = None) -> PullStarted:
        """Start pulling ``image`` onto the given (default: every enabled) server in the background."""
        servers = await self._servers(server_ids)
        if server_ids and len(servers) != len(set(server_ids)):
            raise Unprocessable("some of those servers are not registered or are disabled", code="unknown_server")
        started = PullStarted(pull_id=new_id(), image=image, server_ids=[s.id for s in servers])
        base = {"pull_id": started.pull_id, "template_id": template_id, "image": image}
        await self._publish("template.pull.started", {**base, "server_ids": started.server_ids})
        for server in servers:
            self._tasks.start_soon(self._pull_one, server.id, {**base, "server_id": server.id})
        return started

    async def _pull_one(self, server_id: str, base: dict[str, Any]) -> None:
        async def progress(kind: str, data: dict[str, Any]) -> None:
            await self._publish("template.pull.progress", {**base, **data})

        try:
            store = await self._store(server_id)
            if store is not None and not await store.has_image(base["image"]):
                await store.pull_image(base["image"], progress)
            else:
                await progress("pull", {"status": "already present"})
        except DomainError as exc:
            log.warning("pre-pull of %s on server %s failed: %s", base["image"], server_id, exc.detail)
            await self._publish("template.pull.failed", {**base, "error": exc.detail})
            return
        except Exception as exc:  # one server's failure must not take the app's task group down
            log.exception("pre-pull of %s on server %s failed", base["image"], server_id)
            await self._publish("template.pull.failed", {**base, "error": f"internal error: {type(exc).__name__}"})
            return
        await self._publish("template.pull.done", base)

    async def _publish(self, type_: str, data: dict[str, Any]) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._events.publish(ADMIN_TOPIC, type_, data)
        except DomainError as exc:
            log.warning("event %s not published: %s", type_, exc.detail)
