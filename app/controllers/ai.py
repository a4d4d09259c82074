"""``/api/ai``: explain and rewrite code of a workspace through the configured LLM server.

Both answer JSON by default. With ``Accept: text/event-stream`` they stream SSE instead: a ``retry:`` hint,
an ``ai.started`` frame without an id (``{request_id, kind, model, path, …}``; also in the
``X-AI-Request-Id`` header), then the request's ``ai.token`` frames and one ``ai.done`` or ``ai.error``,
framed exactly as ``/api/events`` frames them, with the hub's event ids. The same events are on topic
``ai:<request id>``: the owner (or an admin) can follow or resume them at
``/api/events?topic=ai:<id>`` (or ``/api/ai/requests/<id>/events``) with ``Last-Event-ID``.

The HTTP client going away cancels the request upstream. The hub never writes files here: a rewrite
returns a diff (validated by the patch validator) to apply with ``POST /api/patch/apply`` and its base hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter
from litestar.response import Stream

from app.context import AppContext
from app.controllers.deps import error_responses
from app.controllers.events import LAST_EVENT_ID, LAST_EVENT_ID_HEADER
from app.errors import DomainError
from app.events import ai_topic
from app.models import new_id
from app.schemas import Body
from app.services.ai.llm import Usage
from app.services.ai.owners import authorize_follower
from app.services.ai.service import PING_TYPE, AIJob, AIRequest, AIResult, Kind, RewriteResult
from app.services.auth.access import Principal, request_id_of
from app.services.workspaces.records import WorkspaceService
from app.streams.events.direct_http import direct_writer
from app.streams.events.fanout import Item, encode_body, with_id
from app.streams.events.sse import MEDIA_TYPE, SSE_HEADERS, event_stream, retry_frame

log = logging.getLogger(__name__)
Line = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
Prompt = Annotated[str, msgspec.Meta(max_length=8000)]
WorkspacePath = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class ExplainRequest(Body):
    """``POST /api/ai/explain``: the file (and optional 1-based inclusive line range) to explain."""

    workspace_id: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    path: WorkspacePath
    start_line: Line | None = None
    end_line: Line | None = None
    question: Prompt | None = None


class RewriteRequest(Body):
    """``POST /api/ai/rewrite``: the lines to rewrite and how."""

    workspace_id: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    path: WorkspacePath
    instruction: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]
    start_line: Line | None = None
    end_line: Line | None = None


class ExplainAnswer(msgspec.Struct):
    """The explanation, whole."""

    request_id: str
    explanation: str
    model: str
    usage: Usage


class RewriteAnswer(msgspec.Struct):
    """A rewrite as a git-style diff against the file as read (``base_sha256``); nothing is written."""

    request_id: str
    path: str
    diff: str
    base_sha256: str
    validation: dict[str, Any] | None
    model: str
    usage: Usage


def _wants_sse(request: Request[Any, Any, Any]) -> bool:
    return MEDIA_TYPE in request.headers.get("accept", "")


def _frame(job: AIJob, event: Any) -> bytes:
    body = encode_body(ai_topic(job.request_id), event.type, event.data)
    return Item(int(event.id), event.type, with_id(int(event.id), body)).frame


async def _sse(job: AIJob, ctx: AppContext) -> AsyncIterator[bytes]:
    """The SSE body of a POST: started frame, then the job's events (all pending ones in one chunk)."""
    try:
        started = msgspec.json.encode({"topic": ai_topic(job.request_id), "type": "ai.started", "data": job.info})
        yield retry_frame(ctx.settings.sse_retry_ms) + b"event: ai.started\ndata: " + started + b"\n\n"
        async for event in job.events:
            frames = [b": ping\n\n" if event.type == PING_TYPE else _frame(job, event)]
            while event.type in (PING_TYPE, "ai.token"):
                try:
                    event = job.events.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                if event.type != PING_TYPE:
                    frames.append(_frame(job, event))
            yield frames[0] if len(frames) == 1 else b"".join(frames)
            if event.type not in (PING_TYPE, "ai.token"):
                return
    except anyio.ClosedResourceError:
        return
    finally:
        job.cancel()  # the client went away (or the stream ended): stop the job and the upstream call


async def _result(request: Request[Any, Any, Any], job: AIJob) -> tuple[str, AIResult]:
    """The job's result; the HTTP client disconnecting meanwhile cancels the job (and the upstream call)."""
    outcome: tuple[str, AIResult] | DomainError | None = None

    async def until_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(until_disconnect)
        try:
            outcome = await job.result()
        except DomainError as exc:
            outcome = exc
        tg.cancel_scope.cancel()
    if isinstance(outcome, DomainError):
        raise outcome
    if outcome is None:
        raise DomainError("the client went away", code="client_closed")
    return outcome


async def _authorized_workspace(
    ctx: AppContext, principal: Principal, workspaces: WorkspaceService, workspace_id: str
) -> str:
    """The workspace id once ``principal`` may use it (404 otherwise).

    A granted check is remembered for ``token_cache_ttl`` seconds per user and workspace, the same
    staleness the token cache accepts: a burst of AI requests does not queue on the database.
    """
    cache = ctx.ai_workspace_grants
    key = (principal.user_id, workspace_id)
    now = time.monotonic()
    if cache.get(key, 0.0) > now:
        return workspace_id
    ws = await workspaces.get(principal, workspace_id)
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = now + ctx.settings.token_cache_ttl
    return ws.id


class AIController(Controller):
    """AI explain/rewrite (JSON, or SSE with ``Accept: text/event-stream``) and following a request's events."""

    path = "/api/ai"
    tags = ["ai"]

    async def _start(
        self,
        kind: Kind,
        request: Request[Any, Any, Any],
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
        data: ExplainRequest | RewriteRequest,
    ) -> AIJob:
        service = ctx.ai
        service.llm.require_configured()
        workspace_id = await _authorized_workspace(ctx, principal, workspaces, data.workspace_id)
        text = data.question if isinstance(data, ExplainRequest) else data.instruction
        ai_request = AIRequest(
            request_id=new_id(16),
            user_id=principal.user_id,
            workspace_id=workspace_id,
            root=ctx.settings.resolved_workspaces_dir / workspace_id,
            storage=await ctx.lifecycle.storage_by_id(workspace_id),
            path=data.path,
            start_line=data.start_line,
            end_line=data.end_line,
            text=text,
            actor_name=principal.username,
            client_addr=request.client.host if request.client else None,
            http_request_id=request_id_of(request.scope),
        )
        owners = ctx.ai_owners
        outcome: AIJob | DomainError | None = None

        async def remember() -> None:  # overlaps the upstream call (a Redis round trip on Redis deployments)
            try:
                await owners.remember(ai_request.request_id, principal.user_id)
            except Exception:  # the owner then cannot follow the topic (fails closed); the request still runs
                log.warning("owner of AI request %s not recorded", ai_request.request_id, exc_info=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(remember)
            try:
                outcome = await service.start(kind, ai_request, ctx.tasks)
            except DomainError as exc:
                outcome = exc
        if isinstance(outcome, DomainError):
            raise outcome
        assert outcome is not None
        return outcome

    async def _answer(self, request: Request[Any, Any, Any], ctx: AppContext, job: AIJob) -> Response[Any] | Stream:
        if _wants_sse(request):
            headers = {**SSE_HEADERS, "X-AI-Request-Id": job.request_id}
            return Stream(_sse(job, ctx), media_type=MEDIA_TYPE, headers=headers)
        async with job:
            text, done = await _result(request, job)
        answer: ExplainAnswer | RewriteAnswer
        if isinstance(done, RewriteResult):
            answer = RewriteAnswer(
                job.request_id, done.path, done.diff, done.base_sha256, done.validation, done.model, done.usage
            )
        else:
            answer = ExplainAnswer(job.request_id, text, done.model, done.usage)
        return Response(answer, headers={"X-AI-Request-Id": job.request_id})

    @post(
        "/explain",
        operation_id="aiExplain",
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 415, 422, 429, 502, 503),
    )
    async def explain(
        self,
        request: Request[Any, Any, Any],
        data: ExplainRequest,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> Response[Any] | Stream:
        """Explain a file or line range: ``ExplainAnswer`` as JSON, or SSE ``ai.token`` … ``ai.done``."""
        job = await self._start("explain", request, ctx, principal, workspaces, data)
        return await self._answer(request, ctx, job)

    @post(
        "/rewrite",
        operation_id="aiRewrite",
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 415, 422, 429, 502, 503),
    )
    async def rewrite(
        self,
        request: Request[Any, Any, Any],
        data: RewriteRequest,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> Response[Any] | Stream:
        """Rewrite a line range: ``RewriteAnswer`` (diff + base hash) as JSON, or SSE ending in ``ai.done``."""
        job = await self._start("rewrite", request, ctx, principal, workspaces, data)
        return await self._answer(request, ctx, job)

    @get(
        "/requests/{request_id:str}/events",
        media_type=MEDIA_TYPE,
        operation_id="aiRequestEvents",
        responses=error_responses(401, 404),
    )
    async def request_events(
        self,
        request: Request[Any, Any, Any],
        ctx: AppContext,
        principal: Principal,
        request_id: Annotated[str, Parameter(max_length=32)],
        last_event_id: LAST_EVENT_ID = None,
        last_event_id_header: LAST_EVENT_ID_HEADER = None,
    ) -> Stream:
        """Follow (or resume, with ``Last-Event-ID``) one AI request's events from the start, as SSE."""
        await authorize_follower(ctx.ai_owners, principal, request_id)
        cursor = last_event_id_header or last_event_id or None
        body = event_stream(
            ctx.events,
            (ai_topic(request_id),),
            last_event_id=cursor,
            since_earliest=cursor is None,
            retry_ms=ctx.settings.sse_retry_ms,
            direct=direct_writer(request.scope),
        )
        return Stream(body, media_type=MEDIA_TYPE, headers=SSE_HEADERS)
