"""Workspace lifecycle: start, stop, restart, delete, clone; every transition persisted, then published.

States: ``created → starting → running → stopping → stopped``, and ``failed`` with a reason. Each
transition is one compare-and-set ``UPDATE … WHERE state IN (…)`` that also bumps ``generation``; only
the caller whose update matched goes on, so two hub processes never start two containers for one
workspace. A start runs in the app's task group and finishes with another CAS on its generation: if a
stop or delete came in between, the start removes exactly the container it made. Reading and moving rows,
publishing and the activity and heartbeat writes live in ``app.services.workspaces.transitions``.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from sqlalchemy import update

from app import metrics
from app.errors import Conflict, DomainError
from app.models import Workspace, WorkspaceState, utcnow
from app.services.auth.access import Principal
from app.services.runtime.base import Endpoint, StartFailed, StorageRef, WorkspaceSpec
from app.services.workspaces import git
from app.services.workspaces.transitions import CLONING, HEARTBEAT_EVERY, Transitions

log = logging.getLogger(__name__)

__all__ = ["CLONING", "HEARTBEAT_EVERY", "STALE_AFTER", "Lifecycle", "uptime_seconds"]

STARTABLE = (WorkspaceState.CREATED, WorkspaceState.STOPPED, WorkspaceState.FAILED)
STOPPABLE = (WorkspaceState.STARTING, WorkspaceState.RUNNING, WorkspaceState.FAILED)
REASON_LIMIT = 4000
LOG_LINES_IN_REASON = 15
STALE_AFTER = 5.0


class Lifecycle(Transitions):
    """The state machine of workspaces over the runtimes in ``Engines``."""

    def spec_for(self, ws: Workspace, storage: StorageRef) -> WorkspaceSpec:
        """What the runtime needs to start ``ws`` with its files at ``storage``."""
        return WorkspaceSpec(
            id=ws.id,
            owner=str(ws.owner_id),
            image=ws.image,
            hub_id=self.settings.hub_id,
            storage=storage,
            mount=self.settings.workspace_mount,
            home=self.settings.workspace_home,
            cpu=ws.cpu,
            memory_mb=ws.memory_mb,
            env={"CODEHUB_WORKSPACE_ID": ws.id},
            labels={"codehub.generation": str(ws.generation)},
            command=tuple(shlex.split(self.settings.workspace_command)),
            ide_secret=self.ide_secrets.for_start(ws.id, ws.generation),
        )

    async def launch_spec(self, ws: Workspace, storage: StorageRef) -> WorkspaceSpec:
        """``spec_for`` plus, for a workspace made from a template, its version's environment (secrets opened)
        and command. The hub's own variables win over the template's."""
        spec = self.spec_for(ws, storage)
        if ws.template_id is None or ws.template_version is None or self.templates is None:
            return spec
        launch = await self.templates.launch(ws.template_id, ws.template_version)
        return msgspec.structs.replace(spec, env={**launch.env, **spec.env}, command=launch.command or spec.command)

    # -- start ---------------------------------------------------------------------------------------------

    async def start(
        self,
        principal: Principal,
        workspace_id: str,
        *,
        wait: bool = False,
        accepted: Callable[[Workspace], Awaitable[None]] | None = None,
    ) -> Workspace:
        """Move to ``starting`` and start in the background (``wait``: until running or failed).

        ``accepted(row)`` runs once the row is ``starting``, while the start goes on (before a ``wait``)."""
        ws = await self.workspaces.get(principal, workspace_id)
        return await self.start_row(ws, wait=wait, accepted=accepted)

    async def start_row(
        self, ws: Workspace, *, wait: bool = False, accepted: Callable[[Workspace], Awaitable[None]] | None = None
    ) -> Workspace:
        """Start a workspace row (no visibility check); ``accepted`` as for ``start``."""
        if ws.state == WorkspaceState.RUNNING:
            return ws
        clone = self._clones.get(ws.id)
        if clone is not None:
            await clone.wait()
            ws = await self.row(ws.id)
        elif ws.state == WorkspaceState.CREATED and ws.state_reason == CLONING:
            raise Conflict("the workspace is still cloning its repository", code="workspace_cloning")
        kind = await self.engines.kind_to_start(ws)
        server_id = ws.server_id
        if server_id is None and self.engines.needs_server(kind):
            server_id = await self.servers.choose(for_user=ws.owner_id, cpu=ws.cpu, memory_mb=ws.memory_mb)
            kind = await self.engines.kind_of_server(server_id)
        row = await self.cas(
            ws.id,
            STARTABLE,
            bump=True,
            guard=self.quotas.admit_start if self.quotas is not None else None,
            state=WorkspaceState.STARTING,
            state_reason=None,
            server_id=server_id,
            runtime=kind,
            exit_code=None,
            container_id=None,
            endpoint=None,
        )
        if row is None:
            current = await self.row(ws.id)
            if current.state == WorkspaceState.RUNNING:
                return current
            raise Conflict(f"the workspace is {current.state}", code="workspace_busy", state=current.state)
        await self.drop_status(row.id)
        if server_id != ws.server_id:
            await self.publish(row, "workspace.placed", server_id=server_id)
        await self.publish(row, "workspace.starting")
        done = anyio.Event()
        self.starts[row.id] = done
        self.beat_written(row.id)  # the move to starting wrote updated_at: the start's first progress need not
        running: list[Workspace] = []
        self._tasks.start_soon(self._run_start, row, done, running)
        if accepted is not None:
            await accepted(row)
        if wait:
            await done.wait()
            return running[0] if running else await self.row(row.id)
        return row

    async def _run_start(self, row: Workspace, done: anyio.Event, running: list[Workspace]) -> None:
        started = time.perf_counter()
        outcome: str | None = None
        try:
            outcome = await self._start_now(row, running)
        except Exception as exc:  # never let one start take the app's task group down
            outcome = "failed"
            log.exception("start of workspace %s failed unexpectedly", row.id)
            await self._fail(row, f"internal error while starting: {exc}")
        finally:
            if outcome is not None:
                metrics.START_SECONDS.labels(row.runtime or "unknown", outcome).observe(time.perf_counter() - started)
            done.set()
            if self.starts.get(row.id) is done:
                del self.starts[row.id]

    async def _start_now(self, row: Workspace, running: list[Workspace]) -> str | None:
        """Start ``row``; the outcome for the start metrics (ok, failed, timeout; None when superseded).

        The running row goes into ``running`` (a waiting caller answers with it, no second read)."""
        try:
            runtime = await self.engines.for_workspace(row)
            if row.git_url and await runtime.storage(row.id, image=row.image).is_empty():
                await self.clone(row, row.git_url)

            async def progress(kind: str, data: dict[str, Any]) -> None:
                await self.heartbeat(row)
                await self.publish(row, "workspace.progress", step=kind, **data)

            endpoint = await runtime.start(
                await self.launch_spec(row, runtime.storage_ref(row.id)),
                ready_timeout=self.settings.start_timeout,
                progress=progress,
            )
        except StartFailed as exc:
            await self._fail(row, exc.detail, exc.logs)
            # runtimes raise the "did not answer HTTP in time" StartFailed while handling a TimeoutError
            return "timeout" if isinstance(exc.__context__, TimeoutError) else "failed"
        except DomainError as exc:
            await self._fail(row, exc.detail)
            return "failed"
        ws = await self.cas_running(row, endpoint)
        if ws is None:
            log.info("start of %s was superseded; removing its container", row.id)
            with anyio.CancelScope(shield=True):
                await runtime.remove(row.id, container_id=endpoint.container_id)
            return None
        running.append(ws)
        await self.drop_status(ws.id)
        await self.publish(ws, "workspace.running", container_id=endpoint.container_id)
        return "ok"

    async def cas_running(self, row: Workspace, endpoint: Endpoint) -> Workspace | None:
        """``starting`` → ``running`` at ``endpoint`` for the start of ``row``'s generation (None: superseded)."""
        now = utcnow()
        return await self.cas(
            row.id,
            (WorkspaceState.STARTING,),
            generation=row.generation,
            state=WorkspaceState.RUNNING,
            container_id=endpoint.container_id,
            endpoint=f"{endpoint.host}:{endpoint.port}",
            started_at=now,
            stopped_at=None,
            last_activity_at=now,
            last_activity_source="start",
        )

    async def _fail(self, row: Workspace, reason: str, logs: list[str] | None = None) -> None:
        text = reason
        if logs:
            text += "\nlast output:\n" + "\n".join(logs[-LOG_LINES_IN_REASON:])
        ws = await self.cas(
            row.id,
            (WorkspaceState.STARTING,),
            generation=row.generation,
            state=WorkspaceState.FAILED,
            state_reason=text[:REASON_LIMIT],
            stopped_at=utcnow(),
        )
        if ws is not None:
            await self.drop_status(ws.id)
            await self.publish(ws, "workspace.failed", logs=(logs or [])[-LOG_LINES_IN_REASON:])

    # -- git -----------------------------------------------------------------------------------------------

    async def clone(self, ws: Workspace, url: str) -> None:
        """Clone into the workspace directory, publishing ``clone.progress``; raises ``CloneFailed``."""

        async def progress(data: dict[str, Any]) -> None:
            await self.heartbeat(ws)
            await self.publish(ws, "clone.progress", **data)

        async def fill(dest: Path) -> None:
            await git.clone(url, dest, ref=ws.git_ref, depth=ws.git_depth, progress=progress)

        storage = await self.storage_for(ws)
        await self.publish(ws, "clone.progress", phase="starting", percent=0, current=0, total=0)
        await storage.populate(fill)
        await self.publish(ws, "clone.progress", phase="done", percent=100, current=0, total=0)

    async def clone_at_create(self, ws: Workspace, clone_url: str) -> Workspace:
        """Mark the new workspace as cloning and clone in the background (credentials stay in memory).

        Also for a workspace that is not running and whose repository changed: it stays in its state
        (``created`` or ``stopped``) while cloning, and becomes ``failed`` if the clone fails."""
        state = ws.state
        row = await self.cas(ws.id, (state,), not_cloning=True, state_reason=CLONING)
        if row is None:
            return ws
        done = anyio.Event()
        self._clones[ws.id] = done

        async def run() -> None:
            try:
                await self.clone(row, clone_url)
            except DomainError as exc:
                failed = await self.cas(
                    ws.id,
                    (state,),
                    state=WorkspaceState.FAILED,
                    state_reason=exc.detail[:REASON_LIMIT],
                )
                if failed is not None:
                    await self.publish(failed, "workspace.failed")
            except Exception as exc:
                log.exception("clone of workspace %s failed unexpectedly", ws.id)
                failed = await self.cas(
                    ws.id, (state,), state=WorkspaceState.FAILED, state_reason=f"clone failed: {exc}"
                )
                if failed is not None:
                    await self.publish(failed, "workspace.failed")
            else:
                ready = await self.cas(ws.id, (state,), state_reason=None)
                if ready is not None:
                    await self.publish(ready, "workspace.cloned")
            finally:
                done.set()
                self._clones.pop(ws.id, None)

        self._tasks.start_soon(run)
        return row

    # -- stop, restart, delete -----------------------------------------------------------------------------

    async def stop(self, principal: Principal, workspace_id: str, *, reason: str = "stopped by request") -> Workspace:
        """Stop (SIGTERM, then SIGKILL after ``stop_grace``); idempotent on a stopped workspace."""
        ws = await self.workspaces.get(principal, workspace_id)
        return await self.stop_row(ws, reason=reason)

    async def stop_row(self, ws: Workspace, *, reason: str) -> Workspace:
        """Stop a workspace row (no visibility check)."""
        row = await self.cas(ws.id, STOPPABLE, bump=True, state=WorkspaceState.STOPPING, state_reason=reason)
        if row is None:
            current = await self.row(ws.id)
            if current.state in (WorkspaceState.STOPPED, WorkspaceState.CREATED):
                return current
            raise Conflict(f"the workspace is {current.state}", code="workspace_busy", state=current.state)
        await self.drop_status(row.id)
        await self.publish(row, "workspace.stopping", reason=reason)
        exit_code = None
        try:
            runtime = await self.engines.for_workspace(row)
            exit_code = await runtime.stop(row.id, grace=self.settings.stop_grace)
        except DomainError as exc:
            failed = await self.cas(
                row.id,
                (WorkspaceState.STOPPING,),
                generation=row.generation,
                state=WorkspaceState.FAILED,
                state_reason=f"could not stop: {exc.detail}"[:REASON_LIMIT],
            )
            if failed is not None:
                await self.publish(failed, "workspace.failed")
            raise
        final = await self.cas(
            row.id,
            (WorkspaceState.STOPPING,),
            generation=row.generation,
            state=WorkspaceState.STOPPED,
            stopped_at=utcnow(),
            exit_code=exit_code,
        )
        if final is None:
            return await self.row(row.id)
        await self.drop_status(final.id)
        await self.publish(final, "workspace.stopped", reason=reason, exit_code=exit_code)
        return final

    async def restart(self, principal: Principal, workspace_id: str, *, wait: bool = False) -> Workspace:
        """Stop if needed, then start."""
        ws = await self.workspaces.get(principal, workspace_id)
        if ws.state in STOPPABLE:
            ws = await self.stop_row(ws, reason="restart")
        return await self.start_row(ws, wait=wait)

    async def delete(self, principal: Principal, workspace_id: str, *, purge: bool = False) -> Workspace:
        """Remove the container (and with ``purge`` the files), then the row; publishes ``workspace.deleted``."""
        ws = await self.workspaces.get(principal, workspace_id)
        clone = self._clones.get(ws.id)
        if clone is not None:
            await clone.wait()
        async with self.sessionmaker() as session:
            await session.execute(
                update(Workspace)
                .where(Workspace.id == ws.id)
                .values(generation=Workspace.generation + 1, updated_at=utcnow())
            )
            await session.commit()
        if ws.runtime is not None or ws.server_id is not None:
            runtime = await self.engines.for_workspace(ws)
            await runtime.remove(ws.id, purge=purge)
        elif purge:
            await (await self.storage_for(ws)).purge()
        await self.drop_status(ws.id)
        self._activity.pop(ws.id, None)
        self._storages.pop(ws.id, None)
        return await self.workspaces.delete_record(principal, ws.id)


def uptime_seconds(ws: Workspace, now: datetime | None = None) -> float | None:
    """Seconds since the workspace started running (None unless running)."""
    if ws.state != WorkspaceState.RUNNING or ws.started_at is None:
        return None
    return round(((now or utcnow()) - ws.started_at).total_seconds(), 3)
