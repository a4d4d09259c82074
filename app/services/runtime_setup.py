"""Lifespan hook that wires the runtimes into the app: engines, lifecycle, servers, background loops.

It registers (in ``ctx.extras``): ``engines``, ``servers``, ``lifecycle``, ``workspace_ops``, ``reconciler``,
``log_pumps``, and the hooks the workspace controller calls: ``place_new`` (choose a server before the row is created),
``after_create`` (announce the placement, start the clone) and ``delete`` (container first, then row).
Other parts record activity with ``await ctx.extras["lifecycle"].touch(workspace_id, "relay")``.
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskStatus

from app.context import AppContext
from app.models import Workspace
from app.services.auth.users import Principal
from app.services.runtime.engines import Engines, make_status_cache
from app.services.workspaces.lifecycle import Lifecycle
from app.services.workspaces.log_pump import LogPumps
from app.services.workspaces.ops import WorkspaceOps
from app.services.workspaces.reconcile import Reconciler
from app.services.workspaces.servers import ServerService


async def _hold_engines(ctx: AppContext, *, task_status: TaskStatus[Engines] = anyio.TASK_STATUS_IGNORED) -> None:
    """Own the engines for the app's lifetime: entered and left in this one task."""
    async with Engines(ctx.settings, ctx.sessionmaker, make_status_cache(ctx.settings, ctx.redis)) as engines:
        await engines.boot()
        task_status.started(engines)
        await anyio.sleep_forever()


async def runtime_startup(ctx: AppContext) -> None:
    """Build the runtime services and start reconciliation, engine events and idle stops."""
    engines: Engines = await ctx.tasks.start(_hold_engines, ctx)
    servers = ServerService(ctx.sessionmaker, engines, ctx.events)
    lifecycle = Lifecycle(ctx.sessionmaker, ctx.settings, ctx.events, engines, ctx.workspaces, servers, ctx.tasks)
    reconciler = Reconciler(lifecycle)
    log_pumps = LogPumps(lifecycle, ctx.sessionmaker, ctx.tasks, ctx.redis)
    lifecycle.listeners.append(log_pumps.on_lifecycle)

    async def place_new(principal: Principal, server_id: str | None) -> str | None:
        if server_id is not None or engines.mode == "docker":
            return await servers.choose(server_id)
        return None

    async def after_create(principal: Principal, ws: Workspace, clone_url: str | None) -> Workspace:
        if ws.server_id is not None:
            await lifecycle.publish(ws, "workspace.placed", server_id=ws.server_id)
        if ws.git_url:
            ws = await lifecycle.clone_at_create(ws, clone_url or ws.git_url)
        return ws

    async def delete(principal: Principal, workspace_id: str, *, purge: bool = False) -> Any:
        return await lifecycle.delete(principal, workspace_id, purge=purge)

    ctx.extras.update(
        engines=engines,
        servers=servers,
        lifecycle=lifecycle,
        workspace_ops=WorkspaceOps(lifecycle),
        reconciler=reconciler,
        log_pumps=log_pumps,
        place_new=place_new,
        after_create=after_create,
        delete=delete,
    )
    ctx.tasks.start_soon(reconciler.loop, ctx.tasks)
    ctx.tasks.start_soon(reconciler.idle_loop)
    ctx.tasks.start_soon(log_pumps.loop)
