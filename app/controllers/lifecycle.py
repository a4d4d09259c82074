"""``/api/workspaces/{id}/…``: start, stop, restart, execute, status, logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from app.context import AppContext
from app.controllers.deps import error_responses, outcome_response
from app.errors import ServiceUnavailable
from app.models import WorkspaceState
from app.schemas import Body, WorkspaceOut
from app.services.audit.log import sha256_hex
from app.services.auth.access import Principal, audit_entry
from app.services.runtime.base import ExecExit, ExecOutput, ExecRequest
from app.services.workspaces.ops import WorkspaceStatus, parse_since
from app.streams.events.sse import MEDIA_TYPE, SSE_HEADERS, item_stream, wants_event_stream

# The route media type (JSON) would win over the stream's own, so the header is set explicitly.
SSE_RESPONSE_HEADERS = {"content-type": MEDIA_TYPE, **SSE_HEADERS}
Command = Annotated[str, msgspec.Meta(min_length=1, max_length=65_536)]
Arg = Annotated[str, msgspec.Meta(max_length=65_536)]


class ExecBody(Body):
    """A command: argv list, or a string run with ``sh -c``."""

    command: Command | Annotated[list[Arg], msgspec.Meta(min_length=1, max_length=4096)]
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    workdir: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    env: dict[str, Arg] = msgspec.field(default_factory=dict)


class ExecOut(msgspec.Struct):
    """A finished command."""

    exec_id: str
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    truncated: bool
    timed_out: bool


class LogLineOut(msgspec.Struct):
    """One IDE output line."""

    at: str
    text: str


class LogsOut(msgspec.Struct):
    """The IDE's last output lines."""

    lines: list[LogLineOut]


def _event_stream(ctx: AppContext, items: AsyncIterator[tuple[str, Any]]) -> Stream:
    body = item_stream(ctx.tasks, items, heartbeat=ctx.settings.sse_heartbeat, retry_ms=ctx.settings.sse_retry_ms)
    return Stream(body, media_type=MEDIA_TYPE, headers=SSE_RESPONSE_HEADERS)


class LifecycleController(Controller):
    """Run workspaces: lifecycle transitions, commands, status and logs."""

    path = "/api/workspaces/{workspace_id:str}"
    tags = ["workspaces"]

    async def _transition(
        self, request: Request[Any, Any, Any], ctx: AppContext, principal: Principal, action: str, ws: Any
    ) -> None:
        await ctx.audit.record(
            audit_entry(request.scope, f"workspace.{action}", principal, workspace_id=ws.id, target=ws.name)
        )

    async def _started(
        self, request: Request[Any, Any, Any], ctx: AppContext, principal: Principal, action: str, ws: Any
    ) -> Response[WorkspaceOut]:
        await self._transition(request, ctx, principal, action, ws)
        return Response(WorkspaceOut.of(ws), status_code=self._status_of(ws))

    @staticmethod
    def _status_of(ws: Any) -> int:
        return HTTP_202_ACCEPTED if ws.state == WorkspaceState.STARTING else HTTP_200_OK

    @post(
        "/start",
        operation_id="startWorkspace",
        status_code=HTTP_202_ACCEPTED,
        responses={**error_responses(401, 403, 404, 409, 503), **outcome_response(WorkspaceOut)},
    )
    async def start(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        ctx: AppContext,
        principal: Principal,
        wait: Annotated[bool, Parameter(description="answer once running or failed")] = False,
    ) -> Response[WorkspaceOut]:
        """Start: 202 with state ``starting`` (follow the events), or with ``?wait=true`` the outcome."""
        audited = False

        async def accepted(row: Any) -> None:  # audited while the start goes on, not after a wait
            nonlocal audited
            audited = True
            await self._transition(request, ctx, principal, "start", row)

        ws = await ctx.lifecycle.start(principal, workspace_id, wait=wait, accepted=accepted)
        if not audited:  # already running (or its clone still going): audited as before
            await self._transition(request, ctx, principal, "start", ws)
        return Response(WorkspaceOut.of(ws), status_code=self._status_of(ws))

    @post("/stop", operation_id="stopWorkspace", status_code=HTTP_200_OK, responses=error_responses(401, 404, 409, 503))
    async def stop(
        self, request: Request[Any, Any, Any], workspace_id: str, ctx: AppContext, principal: Principal
    ) -> WorkspaceOut:
        """Stop (SIGTERM, SIGKILL after the grace period); stopped workspaces answer as they are."""
        ws = await ctx.lifecycle.stop(principal, workspace_id, reason=f"stopped by {principal.username}")
        await self._transition(request, ctx, principal, "stop", ws)
        return WorkspaceOut.of(ws)

    @post(
        "/restart",
        operation_id="restartWorkspace",
        status_code=HTTP_202_ACCEPTED,
        responses={**error_responses(401, 403, 404, 409, 503), **outcome_response(WorkspaceOut)},
    )
    async def restart(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        ctx: AppContext,
        principal: Principal,
        wait: Annotated[bool, Parameter(description="answer once running or failed")] = False,
    ) -> Response[WorkspaceOut]:
        """Stop if running, then start."""
        ws = await ctx.lifecycle.restart(principal, workspace_id, wait=wait)
        return await self._started(request, ctx, principal, "restart", ws)

    @post(
        "/execute",
        operation_id="executeInWorkspace",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 409, 422, 503),
    )
    async def execute(
        self, request: Request[Any, Any, Any], workspace_id: str, data: ExecBody, ctx: AppContext, principal: Principal
    ) -> Any:
        """Run a command; JSON result, or with ``Accept: text/event-stream`` live ``exec.output`` then ``exec.exit``."""
        exec_request = ExecRequest(
            command=data.command,
            timeout_s=data.timeout_s,
            workdir=data.workdir,
            env=data.env,
            max_output_bytes=ctx.settings.exec_max_output_bytes,
        )
        exec_id, items = await ctx.workspace_ops.exec_stream(principal, workspace_id, exec_request)
        command = data.command if isinstance(data.command, str) else "\0".join(data.command)
        await ctx.audit.record(
            audit_entry(
                request.scope,
                "workspace.execute",
                principal,
                workspace_id=workspace_id,
                sha256=sha256_hex(command),
                size=len(command.encode()),
                details={"exec_id": exec_id},
            )
        )
        if wants_event_stream(request.headers.get("accept")):

            async def events() -> AsyncIterator[tuple[str, Any]]:
                async for item in items:
                    if isinstance(item, ExecOutput):
                        yield "exec.output", {"exec_id": exec_id, "stream": item.stream, "data": item.data}
                    elif isinstance(item, ExecExit):
                        yield "exec.exit", {"exec_id": exec_id, **msgspec.structs.asdict(item)}

            return _event_stream(ctx, events())
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        async for item in items:
            if isinstance(item, ExecOutput):
                out[item.stream].append(item.data)
            elif isinstance(item, ExecExit):
                return ExecOut(
                    exec_id,
                    item.exit_code,
                    "".join(out["stdout"]),
                    "".join(out["stderr"]),
                    item.duration_ms,
                    item.truncated,
                    item.timed_out,
                )
        raise ServiceUnavailable("the command stream ended without an exit status", code="exec_lost")

    @get("/status", operation_id="workspaceStatus", responses=error_responses(401, 404, 503))
    async def status(self, workspace_id: str, ctx: AppContext, principal: Principal) -> WorkspaceStatus:
        """State, reason, placement, uptime, CPU/memory/pids (cached briefly), IDE health, last activity."""
        return await ctx.workspace_ops.status(principal, workspace_id)

    @get(
        "/logs",
        operation_id="workspaceLogs",
        responses=error_responses(401, 404, 409, 422, 503),
        opt={"also_sends": {"200": "text/event-stream"}},
    )
    async def logs(
        self,
        workspace_id: str,
        ctx: AppContext,
        principal: Principal,
        tail: Annotated[int, Parameter(ge=0, le=10_000)] = 200,
        since: Annotated[str | None, Parameter(description="UNIX seconds or ISO 8601 time")] = None,
        follow: Annotated[bool, Parameter(description="stream new lines as SSE `log` events")] = False,
    ) -> Any:
        """The IDE's output with timestamps; ``?follow=true`` streams new lines until the workspace stops."""
        ops = ctx.workspace_ops
        after = parse_since(since)
        if not follow:
            lines = await ops.logs(principal, workspace_id, tail=tail, since=after)
            return LogsOut([LogLineOut(line.at, line.text) for line in lines])
        source = await ops.follow_logs(principal, workspace_id, tail=tail, since=after)

        async def events() -> AsyncIterator[tuple[str, Any]]:
            async for line in source:
                yield "log", {"at": line.at, "text": line.text}
            yield "end", {"reason": "the workspace stopped"}

        return _event_stream(ctx, events())
