"""Which runtime serves a workspace: kinds come from the registry; ``Engines`` opens them and decides.

Kinds that run on servers get one runtime per registered server (of the server's ``kind``: a Docker engine
or a Kubernetes namespace), opened on first use; every other kind one runtime for the hub, opened by
``boot``. ``Engines`` is entered once for the app's lifetime (in the task that will also leave it). ``boot``
picks the kind new workspaces get (a server kind when an engine answers or servers are registered, unless
``CODEHUB_RUNTIME`` names a kind) and registers the default server the first time: the local Docker engine
once it answers, or with ``CODEHUB_RUNTIME=kubernetes`` the cluster of ``CODEHUB_KUBECONFIG`` and
``CODEHUB_KUBE_NAMESPACE``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from sqlalchemy import func, select

import app.services.runtime.kubernetes.factory  # (registers the kubernetes kind)
import app.services.runtime.local  # noqa: F401  (registers the local kind)
from app.db import SessionMaker
from app.errors import DomainError, ServiceUnavailable
from app.models import RuntimeKind, Server, Workspace
from app.services.runtime.base import EngineInfo, WorkspaceRuntime
from app.services.runtime.cache import MemoryStatusCache, RedisStatusCache, StatusCache
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.registry import RuntimeOptions, registered_runtimes, runtime_entry
from app.services.runtime.server_kinds import ServerProbes
from app.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_SOCKET = "/var/run/docker.sock"
LOCAL_SERVER_NAME = "local"
SERVER_KIND: str = RuntimeKind.DOCKER  # the kind of a server row that names none
HUB_KIND: str = RuntimeKind.LOCAL  # what new workspaces get while no server is registered


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


class EngineCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One engine's answer to a readiness check.

    ``required`` marks the engine new workspaces go to by default (the hub-wide runtime while workspaces run
    on the hub, else the default server): readiness fails when it is down, not when another server is.
    """

    name: str
    """The server's name, or ``hub-<kind>`` for a runtime of the hub itself."""
    kind: str
    server_id: str | None
    required: bool
    latency_ms: float
    info: EngineInfo


class Engines:
    """The runtimes of every kind, the kind new workspaces get, and which runtime serves a workspace."""

    def __init__(self, settings: Settings, sessionmaker: SessionMaker, cache: StatusCache) -> None:
        self.settings = settings
        self.cache = cache
        self.default_kind = HUB_KIND
        self._sessionmaker = sessionmaker
        self._hub_runtimes: dict[str, WorkspaceRuntime] = {}
        self._server_runtimes: dict[str, WorkspaceRuntime] = {}
        self._stack = AsyncExitStack()
        self._lock = anyio.Lock()
        self._hosts = anyio.create_task_group()
        self._closing = anyio.Event()
        self.probes = ServerProbes()

    async def __aenter__(self) -> Engines:
        await self._stack.__aenter__()
        # Each server's runtime is entered and left in a host task of its own (``_host``), whatever task first
        # asked for it: a runtime's task group must be left from its own scope. Left in reverse order: the
        # hub-wide runtimes, then the hosts once told to close.
        await self._stack.enter_async_context(self._hosts)
        self._stack.callback(self._closing.set)
        return self

    async def __aexit__(self, *exc: object) -> None:
        # No shield around the stack: the local runtime's task group must be left from its own scope.
        await self._stack.aclose()
        await self.probes.aclose()
        self._server_runtimes.clear()
        self._hub_runtimes.clear()

    async def boot(self) -> None:
        """Open the hub-wide runtimes, pick the default kind, register the local Docker engine once it answers."""
        settings = self.settings
        for entry in registered_runtimes():
            if not entry.on_servers and entry.enabled(settings):
                runtime = entry.factory(RuntimeOptions(settings, self.cache))
                self._hub_runtimes[entry.kind] = await self._stack.enter_async_context(runtime)
        if settings.runtime == "kubernetes":
            await self._register_cluster_server(settings.kubeconfig, settings.kube_namespace)
        if settings.runtime not in ("auto", SERVER_KIND):
            self.default_kind = runtime_entry(settings.runtime).kind
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
        self.default_kind = SERVER_KIND if settings.runtime == SERVER_KIND or servers else HUB_KIND
        log.info("workspaces run as %s (%d servers registered)", self.default_kind, servers or 0)

    async def _register_cluster_server(self, kubeconfig: str, namespace: str) -> None:
        async with self._sessionmaker() as session:
            known = select(Server.id).where(Server.kubeconfig == kubeconfig, Server.namespace == namespace)
            if await session.scalar(known.limit(1)):
                return
            name = f"kubernetes-{namespace}"[:64]
            if await session.scalar(select(Server.id).where(Server.name == name)):
                name = f"{name[:50]}-{os.getpid()}"
            has_default = await session.scalar(select(Server.id).where(Server.is_default.is_(True)).limit(1))
            session.add(
                Server(
                    name=name,
                    kind=RuntimeKind.KUBERNETES,
                    kubeconfig=kubeconfig,
                    namespace=namespace,
                    max_workspaces=500,
                    is_default=not has_default,
                )
            )
            await session.commit()
        log.info("registered namespace %s of %s as server %r", namespace, kubeconfig, name)

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

    # -- decisions -----------------------------------------------------------------------------------------

    async def kind_of_server(self, server_id: str) -> str:
        """The kind a workspace placed on ``server_id`` runs as (the server's kind; 503 if it is gone)."""
        async with self._sessionmaker() as session:
            kind = await session.scalar(select(Server.kind).where(Server.id == server_id))
        if kind is None:
            raise ServiceUnavailable(f"server {server_id} is not registered", code="server_gone")
        return str(kind)

    def needs_server(self, kind: str) -> bool:
        """True when workspaces of ``kind`` are placed on a server."""
        return runtime_entry(kind).on_servers

    def new_workspaces_need_server(self) -> bool:
        """True when a workspace created now must be placed on a server."""
        return self.needs_server(self.default_kind)

    async def moves_files(self, source_id: str, target_id: str) -> bool:
        """True when a workspace's files can be moved from server ``source_id`` to ``target_id`` (``move_volume``
        copies Docker volumes, so both must be Docker engines)."""
        kinds = {await self.kind_of_server(source_id), await self.kind_of_server(target_id)}
        return kinds == {RuntimeKind.DOCKER.value}

    async def kind_to_start(self, ws: Workspace) -> str:
        """The kind ``ws`` starts as: the one it ran as, its server's kind when placed, else the default."""
        if ws.runtime:
            return ws.runtime
        return await self.kind_of_server(ws.server_id) if ws.server_id else self.default_kind

    def server_added(self, kind: str = SERVER_KIND) -> None:
        """A server of ``kind`` was registered: new workspaces go to servers unless a hub-wide kind was
        configured."""
        if self.settings.runtime == "auto" and not self.needs_server(self.default_kind):
            self.default_kind = kind

    # -- runtimes ------------------------------------------------------------------------------------------

    async def for_server(self, server_id: str) -> WorkspaceRuntime:
        """The runtime of a registered server (503 if the server is gone)."""
        runtime = self._server_runtimes.get(server_id)
        if runtime is not None:
            return runtime
        async with self._lock:
            runtime = self._server_runtimes.get(server_id)
            if runtime is not None:
                return runtime
            async with self._sessionmaker() as session:
                server = await session.get(Server, server_id)
            if server is None:
                raise ServiceUnavailable(f"server {server_id} is not registered", code="server_gone")
            runtime = runtime_entry(server.kind).factory(RuntimeOptions(self.settings, self.cache, server))
            await self._hosts.start(_host, runtime, self._closing)
            self._server_runtimes[server_id] = runtime
            return runtime

    async def forget(self, server_id: str) -> None:
        """Drop a deleted server's runtime (its client is closed with the others at shutdown)."""
        self._server_runtimes.pop(server_id, None)
        self.probes.forget(server_id)

    async def for_workspace(self, ws: Workspace) -> WorkspaceRuntime:
        """The runtime that runs (or will run) ``ws``."""
        kind = ws.runtime or self.default_kind
        if not self.needs_server(kind):
            runtime = self._hub_runtimes.get(kind)
            assert runtime is not None, "Engines.boot() has not run"
            return runtime
        if ws.server_id is None:
            raise ServiceUnavailable("the workspace is not placed on a server", code="not_placed")
        return await self.for_server(ws.server_id)

    async def all_runtimes(self) -> list[tuple[str | None, WorkspaceRuntime]]:
        """(server id, runtime) of every enabled server plus (None, runtime) of each hub-wide kind."""
        async with self._sessionmaker() as session:
            ids = list(await session.scalars(select(Server.id).where(Server.enabled.is_(True))))
        found: list[tuple[str | None, WorkspaceRuntime]] = []
        for server_id in ids:
            try:
                found.append((server_id, await self.for_server(server_id)))
            except ServiceUnavailable:
                continue
        found.extend((None, runtime) for runtime in self._hub_runtimes.values())
        return found

    async def check(self, within: float) -> list[EngineCheck]:
        """Ask every enabled server's engine and every hub-wide runtime for its version, concurrently.

        Each answer is bounded by ``within`` seconds; a failure is part of the result, never raised.
        """
        async with self._sessionmaker() as session:
            servers = list(await session.scalars(select(Server).where(Server.enabled.is_(True))))
        on_servers = self.needs_server(self.default_kind)
        results: list[EngineCheck] = []

        async def probe(name: str, kind: str, server_id: str | None, required: bool, get: _RuntimeGetter) -> None:
            started = time.perf_counter()
            try:
                with anyio.fail_after(within):
                    info = await (await get()).info()
            except TimeoutError:
                info = EngineInfo(ok=False, error=f"no answer within {within:g} s")
            except DomainError as exc:
                info = EngineInfo(ok=False, error=exc.detail)
            latency = info.latency_ms if info.ok else round((time.perf_counter() - started) * 1000, 2)
            results.append(
                EngineCheck(name=name, kind=kind, server_id=server_id, required=required, latency_ms=latency, info=info)
            )

        async with anyio.create_task_group() as tg:
            for server in servers:
                required = on_servers and server.is_default
                tg.start_soon(probe, server.name, server.kind, server.id, required, _getter(self, server.id))
            for kind, runtime in self._hub_runtimes.items():
                tg.start_soon(probe, f"hub-{kind}", kind, None, kind == self.default_kind, _constant(runtime))
        results.sort(key=lambda c: (not c.required, c.name))
        return results


_RuntimeGetter = Callable[[], Awaitable[WorkspaceRuntime]]


async def _host(
    runtime: WorkspaceRuntime, closing: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Hold ``runtime`` open in this task until the engines close."""
    async with runtime:
        task_status.started()
        await closing.wait()


def _getter(engines: Engines, server_id: str) -> _RuntimeGetter:
    return lambda: engines.for_server(server_id)


def _constant(runtime: WorkspaceRuntime) -> _RuntimeGetter:
    async def get() -> WorkspaceRuntime:
        return runtime

    return get
