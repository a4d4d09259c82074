"""Keeping the database true to the engines, and stopping idle workspaces.

- ``reconcile_once`` (at start and every ``reconcile_interval``): a running row whose container died becomes
  ``stopped``/``failed`` with its exit code; one whose container vanished becomes ``stopped``; a start or
  stop left half-done by a hub that died is finished (a healthy container is adopted, anything else is
  removed and the row fails); a container with this deployment's hub id whose workspace is gone from the
  database is reported, then removed after ``orphan_grace``.
- ``watch_events``: the same per-workspace check the moment the engine reports ``die``/``oom``/``destroy``.

Each row is judged only by the runtime of the server that holds it (its ``runtime`` kind and ``server_id``):
with Docker and Kubernetes servers side by side, what one engine says of a workspace placed on another (a
leftover of an earlier placement) never stops or fails it, and such a leftover is no orphan.
- ``idle_loop``: ``workspace.stop_pending`` ``idle_warning`` seconds ahead, then a stop with reason ``idle``.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import anyio
from sqlalchemy import select

from app.errors import Conflict, DomainError
from app.events import ADMIN_TOPIC
from app.models import Workspace, WorkspaceState, utcnow
from app.services.runtime.base import RuntimeState, WorkspaceRuntime
from app.services.runtime.common import ide_healthy
from app.services.workspaces.lifecycle import CLONING, HEARTBEAT_EVERY, STALE_AFTER, Lifecycle

log = logging.getLogger(__name__)
CLEAN_EXITS = (0, 143)


class Reconciler:
    """Reconciliation and idle stops for one hub process (several processes may run them at once)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.settings = lifecycle.settings
        self._sessionmaker = lifecycle.sessionmaker
        self._orphans: dict[tuple[str | None, str], float] = {}
        self._warned: set[tuple[str, Any]] = set()
        self._watching: set[str | None] = set()
        self._strays: set[tuple[str | None, str]] = set()

    async def _admin_event(self, type_: str, data: dict[str, Any]) -> None:
        try:
            await self.lifecycle.events.publish(ADMIN_TOPIC, type_, data)
        except DomainError as exc:
            log.warning("admin event %s not published: %s", type_, exc.detail)

    async def reconcile_once(self) -> None:
        """One pass over every reachable engine."""
        for server_id, runtime in await self.lifecycle.engines.all_runtimes():
            try:
                states = await runtime.list_states(self.settings.hub_id)
            except DomainError as exc:
                log.warning("reconcile: engine of server %s unreachable: %s", server_id, exc.detail)
                continue
            await self._reconcile_engine(server_id, runtime, states)

    async def _reconcile_engine(
        self, server_id: str | None, runtime: WorkspaceRuntime, states: list[RuntimeState]
    ) -> None:
        by_id = {state.workspace_id: state for state in states}
        query = select(Workspace).where(Workspace.runtime == runtime.kind)
        if server_id is not None:
            query = query.where(Workspace.server_id == server_id)
        async with self._sessionmaker() as session:
            rows = list(await session.scalars(query))
            known = {ws.id for ws in rows}
            strangers = [s.workspace_id for s in states if s.workspace_id not in known]
            elsewhere = set(await session.scalars(select(Workspace.id).where(Workspace.id.in_(strangers))))
        for ws in rows:
            try:
                await self.check(ws, by_id.get(ws.id), runtime)
            except DomainError as exc:
                log.warning("reconcile of %s failed: %s", ws.id, exc.detail)
        seen = set()
        for state in states:
            if state.workspace_id in known or state.hub_id != self.settings.hub_id:
                continue
            key = (server_id, state.container_id)
            seen.add(key)
            if state.workspace_id in elsewhere:
                self._stray(key, state)
            else:
                await self._orphan(key, state, runtime)
        for key in [k for k in self._orphans if k[0] == server_id and k not in seen]:
            del self._orphans[key]
        self._strays = {k for k in self._strays if k[0] != server_id or k in seen}

    def _stray(self, key: tuple[str | None, str], state: RuntimeState) -> None:
        if key not in self._strays:
            self._strays.add(key)
            log.warning(
                "container %s of workspace %s is left on server %s; the workspace is placed elsewhere",
                state.container_id[:12],
                state.workspace_id,
                key[0],
            )

    async def _orphan(self, key: tuple[str | None, str], state: RuntimeState, runtime: WorkspaceRuntime) -> None:
        data = {"server_id": key[0], "container_id": state.container_id, "workspace_id": state.workspace_id}
        first = self._orphans.get(key)
        now = time.monotonic()
        if first is None:
            self._orphans[key] = now
            log.warning(
                "orphan container %s (workspace %s: no such workspace)", state.container_id[:12], state.workspace_id
            )
            await self._admin_event("runtime.orphan", {**data, "grace_s": self.settings.orphan_grace})
            first = now
        if now - first >= self.settings.orphan_grace:
            await runtime.remove(state.workspace_id, container_id=state.container_id)
            self._orphans.pop(key, None)
            await self._admin_event("runtime.orphan_removed", data)

    async def check(self, ws: Workspace, state: RuntimeState | None, runtime: WorkspaceRuntime) -> None:
        """Bring one row in line with what the engine says of its container."""
        lifecycle = self.lifecycle
        age = (utcnow() - ws.updated_at).total_seconds()
        if ws.state == WorkspaceState.RUNNING:
            if state is None:
                removed = "the container was removed outside the hub"
                await self._finish(ws, WorkspaceState.RUNNING, WorkspaceState.STOPPED, removed, None)
            elif not state.running:
                full = await runtime.inspect(ws.id) or state
                await self._finish(ws, WorkspaceState.RUNNING, *_exit_outcome(full))
        elif ws.state == WorkspaceState.STARTING:
            if ws.id in lifecycle.starts or age < self.settings.start_timeout + STALE_AFTER + HEARTBEAT_EVERY:
                return
            await self._stale_start(ws, state, runtime)
        elif ws.state == WorkspaceState.STOPPING:
            if age < self.settings.stop_grace + 30:
                return
            code = await runtime.stop(ws.id, grace=self.settings.stop_grace)
            await self._finish(ws, WorkspaceState.STOPPING, WorkspaceState.STOPPED, ws.state_reason or "stopped", code)
        elif state is not None and state.running and ws.state_reason != CLONING:
            async with self._sessionmaker() as session:
                now = await session.get(Workspace, ws.id, populate_existing=True)
            if now is None or now.generation != ws.generation:
                return  # a transition happened since the row was read: next pass decides
            log.warning("workspace %s is %s but its container runs: stopping it", ws.id, ws.state)
            await runtime.stop(ws.id, grace=self.settings.stop_grace)

    async def _stale_start(self, ws: Workspace, state: RuntimeState | None, runtime: WorkspaceRuntime) -> None:
        if state is not None and state.running:
            try:
                endpoint = await runtime.endpoint(ws.id)
                healthy = await ide_healthy(endpoint.url)
            except DomainError:
                healthy = False
            if healthy:
                row = await self.lifecycle.cas_running(ws, endpoint)
                if row is not None:
                    await self.lifecycle.publish(row, "workspace.running", adopted=True)
                return
        if state is not None:
            await runtime.remove(ws.id, container_id=state.container_id)
        await self._finish(
            ws, WorkspaceState.STARTING, WorkspaceState.FAILED, "the hub stopped during the start; start it again", None
        )

    async def _finish(
        self, ws: Workspace, expected: WorkspaceState, state: WorkspaceState, reason: str, exit_code: int | None
    ) -> None:
        row = await self.lifecycle.cas(
            ws.id,
            (expected,),
            generation=ws.generation,
            state=state,
            state_reason=reason,
            exit_code=exit_code,
            stopped_at=utcnow(),
        )
        if row is not None:
            await self.lifecycle.drop_status(ws.id)
            await self.lifecycle.publish(row, f"workspace.{state}", reason=reason, exit_code=exit_code)

    async def on_event(self, server_id: str | None, runtime: WorkspaceRuntime, workspace_id: str) -> None:
        """An engine event for a workspace: re-check its row if it is supposed to run there."""
        async with self._sessionmaker() as session:
            ws = await session.get(Workspace, workspace_id)
        if ws is None or ws.state != WorkspaceState.RUNNING or not _held_by(ws, server_id, runtime):
            return
        await self.check(ws, await runtime.inspect(workspace_id), runtime)

    async def watch_events(self, server_id: str | None, runtime: WorkspaceRuntime) -> None:
        """Follow one engine's events forever, reconnecting with backoff."""
        delay = 1.0
        try:
            while True:
                try:
                    async for event in runtime.events(self.settings.hub_id):
                        delay = 1.0
                        if event.event in ("die", "oom", "destroy", "stop"):
                            await self.on_event(server_id, runtime, event.workspace_id)
                except DomainError as exc:
                    log.warning("event stream of server %s: %s", server_id, exc.detail)
                except Exception:
                    log.exception("event stream of server %s broke", server_id)
                await anyio.sleep(delay)
                delay = min(delay * 2, 30.0)
        finally:
            self._watching.discard(server_id)

    async def loop(self, tasks: Any) -> None:
        """Reconcile now and every ``reconcile_interval``; keep one event watcher per engine."""
        while True:
            try:
                for server_id, runtime in await self.lifecycle.engines.all_runtimes():
                    if server_id not in self._watching:
                        self._watching.add(server_id)
                        tasks.start_soon(self.watch_events, server_id, runtime)
                await self.reconcile_once()
            except Exception:
                log.exception("reconciliation failed")
            await anyio.sleep(self.settings.reconcile_interval)

    async def idle_once(self) -> None:
        """Warn, then stop, running workspaces idle past the timeout."""
        now = utcnow()
        async with self._sessionmaker() as session:
            rows = list(await session.scalars(select(Workspace).where(Workspace.state == WorkspaceState.RUNNING)))
        for ws in rows:
            timeout = self.settings.idle_timeout if ws.idle_timeout is None else ws.idle_timeout  # a template's
            if not timeout:
                continue
            warning = min(self.settings.idle_warning, timeout)
            last = ws.last_activity_at or ws.started_at or ws.updated_at
            idle_for = (now - last).total_seconds()
            if idle_for >= timeout:
                try:
                    await self.lifecycle.stop_row(ws, reason="idle")
                except (Conflict, DomainError) as exc:
                    log.info("idle stop of %s skipped: %s", ws.id, exc.detail)
            elif warning and idle_for >= timeout - warning and (ws.id, last) not in self._warned:
                self._warned.add((ws.id, last))
                await self.lifecycle.publish(
                    ws,
                    "workspace.stop_pending",
                    reason="idle",
                    idle_for_s=round(idle_for, 1),
                    stop_at=(last + timedelta(seconds=timeout)).isoformat(),
                )
        live = {ws.id for ws in rows}
        self._warned = {key for key in self._warned if key[0] in live}

    async def idle_loop(self) -> None:
        """Run ``idle_once`` at a pace that fits the timeout."""
        step = max(0.25, min(30.0, (self.settings.idle_warning or self.settings.idle_timeout) / 4))
        while True:
            try:
                await self.idle_once()
            except Exception:
                log.exception("idle check failed")
            await anyio.sleep(step)


def _held_by(ws: Workspace, server_id: str | None, runtime: WorkspaceRuntime) -> bool:
    """True when ``ws`` runs on this runtime: its kind, and its server (a hub-wide runtime has none)."""
    return ws.runtime == runtime.kind and (server_id is None or ws.server_id == server_id)


def _exit_outcome(state: RuntimeState) -> tuple[WorkspaceState, str, int | None]:
    """(state, reason, exit code) for a container that stopped on its own."""
    code = state.exit_code
    if state.oom_killed:
        return WorkspaceState.FAILED, f"the IDE ran out of memory (exit code {code})", code
    if code in CLEAN_EXITS:
        return WorkspaceState.STOPPED, f"the IDE exited (code {code})", code
    return WorkspaceState.FAILED, f"the IDE exited with code {code}", code
