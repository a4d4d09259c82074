"""What one can ask of a workspace beyond its lifecycle: status, logs, command execution."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import msgspec

from app.errors import DomainError, Unprocessable
from app.events import workspace_exec_topic
from app.models import Server, Workspace, WorkspaceState, new_id, utcnow
from app.services.auth.access import Level, Principal
from app.services.runtime.base import ExecExit, ExecItem, ExecOutput, ExecRequest, LogLine, WorkspaceNotRunning
from app.services.runtime.common import ide_healthy
from app.services.workspaces.lifecycle import Lifecycle, uptime_seconds

log = logging.getLogger(__name__)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_TAIL = 10_000


class WorkspaceStatus(msgspec.Struct, kw_only=True):
    """What a workspace is doing right now and why it is (still) up; resource numbers only while running."""

    id: str
    state: str
    reason: str | None
    server_id: str | None
    server_name: str | None = None
    runtime: str | None
    container_id: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    uptime_s: float | None
    exit_code: int | None
    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_limit_bytes: int | None = None
    pids: int | None = None
    sampled_at: str | None = None
    ide_healthy: bool | None = None
    last_activity_at: datetime | None
    last_activity_source: str | None
    idle_timeout_s: float | None
    idle_stop_at: datetime | None = None
    runtime_error: str | None = None


class WorkspaceOps:
    """Status, logs and exec of a workspace the caller may see."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def _running(self, principal: Principal, workspace_id: str, need: Level) -> Workspace:
        ws = await self.lifecycle.workspaces.get(principal, workspace_id, need)
        if ws.state != WorkspaceState.RUNNING:
            raise WorkspaceNotRunning(f"the workspace is {ws.state}, not running", state=ws.state)
        return ws

    async def _server_name(self, server_id: str | None) -> str | None:
        if server_id is None:
            return None
        async with self.lifecycle.sessionmaker() as session:
            server = await session.get(Server, server_id)
        return server.name if server is not None else None

    async def status(self, principal: Principal, workspace_id: str) -> WorkspaceStatus:
        """State, placement, uptime, resource numbers, IDE health and why it is still up."""
        ws = await self.lifecycle.workspaces.get(principal, workspace_id, Level.VIEW)
        idle_timeout = self.lifecycle.settings.idle_timeout
        status = WorkspaceStatus(
            id=ws.id,
            state=ws.state,
            reason=ws.state_reason,
            server_id=ws.server_id,
            server_name=await self._server_name(ws.server_id),
            runtime=ws.runtime,
            container_id=ws.container_id,
            started_at=ws.started_at,
            stopped_at=ws.stopped_at,
            uptime_s=uptime_seconds(ws),
            exit_code=ws.exit_code,
            last_activity_at=ws.last_activity_at,
            last_activity_source=ws.last_activity_source,
            idle_timeout_s=float(idle_timeout) if idle_timeout else None,
        )
        if ws.state != WorkspaceState.RUNNING:
            return status
        since = ws.last_activity_at or ws.started_at
        if idle_timeout and since is not None:
            status.idle_stop_at = since + timedelta(seconds=idle_timeout)
        try:
            runtime = await self.lifecycle.engines.for_workspace(ws)
            numbers = await runtime.status(ws.id)
            endpoint = await runtime.endpoint(ws.id)
        except DomainError as exc:
            status.ide_healthy = False
            status.runtime_error = exc.detail
            return status
        status.cpu_percent = float(numbers.cpu_percent)
        status.memory_used_bytes = numbers.memory_used_bytes
        status.memory_limit_bytes = numbers.memory_limit_bytes
        status.pids = numbers.pids
        status.sampled_at = numbers.sampled_at
        status.ide_healthy = await ide_healthy(endpoint.url)
        return status

    async def logs(
        self, principal: Principal, workspace_id: str, *, tail: int = 200, since: float | None = None
    ) -> list[LogLine]:
        """The IDE's last lines (any state but never started)."""
        ws = await self.lifecycle.workspaces.get(principal, workspace_id, Level.VIEW)
        if ws.runtime is None:
            return []
        runtime = await self.lifecycle.engines.for_workspace(ws)
        try:
            return await runtime.logs(ws.id, tail=min(tail, MAX_TAIL), since=since)
        except DomainError:
            return []

    async def follow_logs(
        self, principal: Principal, workspace_id: str, *, tail: int = 0, since: float | None = None
    ) -> AsyncIterator[LogLine]:
        """Lines as they come, until the workspace stops."""
        ws = await self._running(principal, workspace_id, Level.VIEW)
        runtime = await self.lifecycle.engines.for_workspace(ws)
        return runtime.follow_logs(ws.id, tail=min(tail, MAX_TAIL), since=since)

    def check_exec(self, request: ExecRequest) -> ExecRequest:
        """Validate and cap an exec request against the settings."""
        settings = self.lifecycle.settings
        if request.timeout_s <= 0 or request.timeout_s > settings.exec_max_timeout:
            raise Unprocessable(f"timeout_s must be in (0, {settings.exec_max_timeout:g}]", code="bad_timeout")
        if not request.command or (isinstance(request.command, list) and not all(request.command)):
            raise Unprocessable("command must be a non-empty string or argv list", code="bad_command")
        bad = next((key for key in request.env if not ENV_NAME.match(key)), None)
        if bad is not None:
            raise Unprocessable(f"env name {bad!r} is not a valid variable name", code="bad_env")
        if request.workdir is not None and ("\0" in request.workdir or not request.workdir.strip()):
            raise Unprocessable("workdir is empty or has a NUL byte", code="bad_workdir")
        cap = min(request.max_output_bytes, settings.exec_max_output_bytes)
        return msgspec.structs.replace(request, max_output_bytes=cap)

    async def exec_stream(
        self, principal: Principal, workspace_id: str, request: ExecRequest
    ) -> tuple[str, AsyncIterator[ExecItem]]:
        """(exec id, items); each item is also published on ``workspace:<id>:exec``."""
        request = self.check_exec(request)
        ws = await self._running(principal, workspace_id, Level.USE)
        runtime = await self.lifecycle.engines.for_workspace(ws)
        await self.lifecycle.touch(ws.id, "exec")
        exec_id = new_id()
        topic = workspace_exec_topic(ws.id)
        events = self.lifecycle.events
        command = request.command if isinstance(request.command, str) else " ".join(request.command)

        async def publish(type_: str, data: dict[str, Any]) -> None:
            try:
                await events.publish(topic, type_, {"exec_id": exec_id, "workspace_id": ws.id, **data})
            except DomainError as exc:
                log.warning("exec event not published: %s", exc.detail)

        async def items() -> AsyncIterator[ExecItem]:
            await publish("exec.start", {"command": command[:1000], "user_id": principal.user_id})
            async for item in runtime.exec_stream(ws.id, request):
                if isinstance(item, ExecOutput):
                    await publish("exec.output", {"stream": item.stream, "data": item.data})
                elif isinstance(item, ExecExit):
                    await publish("exec.exit", msgspec.structs.asdict(item))
                yield item

        return exec_id, items()


def parse_since(value: str | None) -> float | None:
    """A UNIX time from ``since`` given as seconds or an ISO 8601 time (None when absent)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Unprocessable("since must be UNIX seconds or an ISO 8601 time", code="bad_since") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=utcnow().tzinfo)
    return stamp.timestamp()
