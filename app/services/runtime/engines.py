"""Which runtime serves a workspace: one Docker runtime per registered server, or the local-process runtime.

``Engines`` is entered once for the app's lifetime (in the task that will also leave it). ``boot`` opens the
local-process runtime, decides the mode (``docker`` when an engine answers or servers are registered, unless
``CODEHUB_RUNTIME`` says otherwise) and registers the local Docker engine as the default server the first
time it answers.
"""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal

import anyio
from sqlalchemy import func, select

from app.db import SessionMaker
from app.errors import ServiceUnavailable
from app.models import Server, Workspace
from app.services.runtime.base import WorkspaceRuntime
from app.services.runtime.cache import MemoryStatusCache, RedisStatusCache, StatusCache
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.local import LocalRuntime
from app.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_SOCKET = "/var/run/docker.sock"
LOCAL_SERVER_NAME = "local"


def local_docker_url(settings: Settings) -> str | None:
    """The engine ``docker_url`` names: explicit, or (``auto``) ``DOCKER_HOST`` / the default socket."""
    if settings.docker_url in ("none", ""):
        return None
    if settings.docker_url != "auto":
        return settings.docker_url
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    return f"unix://{DEFAULT_SOCKET}" if Path(DEFAULT_SOCKET).exists() else None


def make_status_cache(settings: Settings, redis: Any) -> StatusCache:
    """Redis-backed when the hub has Redis (shared by all hub processes), in-process otherwise."""
    return RedisStatusCache(redis, settings.redis_prefix) if redis is not None else MemoryStatusCache()


class Engines:
    """Runtimes by server id, opened on first use and closed when the app stops."""

    def __init__(self, settings: Settings, sessionmaker: SessionMaker, cache: StatusCache) -> None:
        self.settings = settings
        self.cache = cache
        self.mode: Literal["docker", "local"] = "local"
        self.local: LocalRuntime | None = None
        self._sessionmaker = sessionmaker
        self._docker: dict[str, DockerRuntime] = {}
        self._stack = AsyncExitStack()
        self._lock = anyio.Lock()

    async def __aenter__(self) -> Engines:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # No shield around the stack: the local runtime's task group must be left from its own scope.
        await self._stack.aclose()
        self._docker.clear()

    async def boot(self) -> None:
        """Open the local runtime, pick the mode, register the local Docker engine once it answers."""
        settings = self.settings
        self.local = await self._stack.enter_async_context(
            LocalRuntime(
                settings.data_dir.resolve() / "run",
                settings.local_ide_command,
                status_cache=self.cache,
                status_ttl=settings.status_cache_ttl,
            )
        )
        if settings.runtime == "local":
            self.mode = "local"
            return
        url = local_docker_url(settings)
        if url:
            async with DockerRuntime(url) as probe:
                info = await probe.info()
            if info.ok:
                await self._register_local_server(url)
            else:
                log.warning("no Docker engine answers at %s: %s", url, info.error)
        async with self._sessionmaker() as session:
            servers = await session.scalar(select(func.count(Server.id)).where(Server.enabled.is_(True)))
        self.mode = "docker" if settings.runtime == "docker" or servers else "local"
        log.info("workspaces run as %s (%d Docker servers registered)", self.mode, servers or 0)

    async def _register_local_server(self, url: str) -> None:
        async with self._sessionmaker() as session:
            if await session.scalar(select(Server.id).where(Server.docker_url == url).limit(1)):
                return
            name = LOCAL_SERVER_NAME
            if await session.scalar(select(Server.id).where(Server.name == name)):
                name = f"{LOCAL_SERVER_NAME}-{os.getpid()}"
            has_default = await session.scalar(select(Server.id).where(Server.is_default.is_(True)).limit(1))
            session.add(Server(name=name, docker_url=url, max_workspaces=50, is_default=not has_default))
            await session.commit()
        log.info("registered the local Docker engine %s as server %r", url, name)

    async def for_server(self, server_id: str) -> DockerRuntime:
        """The Docker runtime of a registered server (503 if the server is gone)."""
        runtime = self._docker.get(server_id)
        if runtime is not None:
            return runtime
        async with self._lock:
            runtime = self._docker.get(server_id)
            if runtime is not None:
                return runtime
            async with self._sessionmaker() as session:
                server = await session.get(Server, server_id)
            if server is None:
                raise ServiceUnavailable(f"server {server_id} is not registered", code="server_gone")
            runtime = DockerRuntime(
                server.docker_url,
                public_host=server.public_host,
                container_user=self.settings.container_user,
                pull=self.settings.pull_images,
                status_cache=self.cache,
                status_ttl=self.settings.status_cache_ttl,
            )
            await self._stack.enter_async_context(runtime)
            self._docker[server_id] = runtime
            return runtime

    async def forget(self, server_id: str) -> None:
        """Drop a deleted server's runtime (its client is closed with the others at shutdown)."""
        self._docker.pop(server_id, None)

    def kind_for_new(self) -> Literal["docker", "local"]:
        """Runtime kind a workspace started now gets."""
        return self.mode

    async def for_workspace(self, ws: Workspace) -> WorkspaceRuntime:
        """The runtime that runs (or will run) ``ws``."""
        kind = ws.runtime or self.mode
        if kind == "local":
            assert self.local is not None, "Engines.boot() has not run"
            return self.local
        if ws.server_id is None:
            raise ServiceUnavailable("the workspace is not placed on a server", code="not_placed")
        return await self.for_server(ws.server_id)

    async def all_runtimes(self) -> list[tuple[str | None, WorkspaceRuntime]]:
        """(server id, runtime) of every enabled server plus (None, local runtime)."""
        async with self._sessionmaker() as session:
            ids = list(await session.scalars(select(Server.id).where(Server.enabled.is_(True))))
        found: list[tuple[str | None, WorkspaceRuntime]] = []
        for server_id in ids:
            try:
                found.append((server_id, await self.for_server(server_id)))
            except ServiceUnavailable:
                continue
        if self.local is not None:
            found.append((None, self.local))
        return found
