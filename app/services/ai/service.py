"""AI explain and rewrite: context, prompt, a streamed completion, events on ``ai:<request id>``, audit.

``AIService.start`` runs one request as a job in a task group (the app's lifespan group for HTTP) and
returns an ``AIJob`` once the context is built, the per-user limits admitted it and the LLM server answered
with a stream; every failure a client should see as an HTTP status (404, 413, 415, 422, 429, 502, 503) is
raised from ``start`` instead. The job then delivers ``ai.token`` events (``{text, index}``; ``index``
counts token events 0, 1, 2…) and one final ``ai.done`` (usage; for rewrite the diff) or ``ai.error``
(``{error, detail, status}``). Each is published on the topic first and carries the hub's event id, so a
client can resume with ``Last-Event-ID``. While the model is silent for ``sse_heartbeat`` seconds the
job also delivers an unpublished ``ping`` event (for SSE heartbeats; ``result()`` skips it).

Tokens are read and published by two tasks: while the hub keeps up, each token is its own event; while a
publish is in flight (a slow hub, e.g. Redis under load), tokens that arrive meanwhile go out together in
the next event. The consumer of ``AIJob.events`` owns the job: ``cancel()`` (or leaving ``async with job``)
stops it, which closes the upstream request and publishes ``ai.error`` ``cancelled``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from app.errors import BadGateway, DomainError, Unprocessable, error_body
from app.events import EventPublisher, ai_topic
from app.services.ai.context import CodeContext, build_context
from app.services.ai.llm import ChatStream, LLMClient, Message, Usage
from app.services.ai.prompts import explain_messages, rewrite_messages
from app.services.ai.rewrite import extract_code, replace_range, unified_diff
from app.services.audit.log import AuditEntry
from app.services.files.paths import normalize
from app.services.files.storage import LocalStorage, WorkspaceStorage
from app.settings import Settings

Kind = Literal["explain", "rewrite"]
AuditSink = Callable[[AuditEntry], Awaitable[Any]]
Validator = Callable[[WorkspaceStorage, str], Awaitable[dict[str, Any]]]
_NOT_AUDITED = {"ai_rate_limited", "ai_concurrency_limit", "llm_not_configured"}
_CANCELLED = error_body("cancelled", "the request was cancelled", status=499)
_INTERNAL = error_body("internal", "the AI request failed inside the hub", status=500)
PING_TYPE = "ping"
log = logging.getLogger(__name__)


class AIResult(msgspec.Struct, kw_only=True):
    """The data of ``ai.done`` for explain: token usage, the model that answered and why it stopped."""

    usage: Usage
    model: str
    finish_reason: str | None


class RewriteResult(AIResult, kw_only=True):
    """``ai.done`` of a rewrite: also the diff against the file as read, its base hash and the validation."""

    path: str
    diff: str
    base_sha256: str
    validation: dict[str, Any] | None


@dataclass(slots=True)
class AIEvent:
    """One published step of an AI request, with the hub's event id (``ai.done`` also carries its result)."""

    id: str
    type: str
    data: dict[str, Any]
    error: DomainError | None = None
    result: AIResult | None = None


PING = AIEvent("", PING_TYPE, {})  # not published: tells an SSE consumer to send a heartbeat comment


@dataclass(slots=True)
class AIRequest:
    """What a client asked for, already authorized: ``storage`` holds the workspace's files (``root``: a
    directory on the hub's disk, used when no storage is given)."""

    request_id: str
    user_id: int
    workspace_id: str
    root: Path
    path: str
    start_line: int | None = None
    end_line: int | None = None
    text: str | None = None  # the question (explain) or the instruction (rewrite)
    actor_name: str | None = None
    client_addr: str | None = None
    http_request_id: str | None = None  # the HTTP request's id, for the audit row (the AI id goes in details)
    storage: WorkspaceStorage | None = None

    @property
    def files(self) -> WorkspaceStorage:
        """Where the workspace's files are read."""
        return self.storage if self.storage is not None else LocalStorage(self.root)


class AIJob:
    """A running AI request: iterate ``events`` until ``ai.done`` or ``ai.error``; ``cancel()`` stops it."""

    def __init__(
        self,
        request: AIRequest,
        kind: Kind,
        info: dict[str, Any],
        events: MemoryObjectReceiveStream[AIEvent],
        scope: anyio.CancelScope,
    ) -> None:
        self.request_id = request.request_id
        self.kind = kind
        self.info = info
        self.events = events
        self._scope = scope

    def cancel(self) -> None:
        """Stop the job (safe to call from any task, any number of times)."""
        self._scope.cancel()
        self.events.close()

    async def __aenter__(self) -> AIJob:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    async def result(self) -> tuple[str, AIResult]:
        """Wait for the end: the streamed text and the ``ai.done`` result; raises the error of an ``ai.error``."""
        parts: list[str] = []
        async for event in self.events:
            if event.type == "ai.token":
                parts.append(event.data["text"])
            elif event.type == "ai.done" and event.result is not None:
                return "".join(parts), event.result
            elif event.type == "ai.error":
                raise event.error or BadGateway(event.data["detail"], code=event.data["error"])
        raise BadGateway("the AI request ended without a result", code="llm_error")


@dataclass(slots=True)
class _Run:
    kind: Kind
    request: AIRequest
    ctx: CodeContext | None = None
    prompt_sha256: str = ""
    response: list[str] = field(default_factory=list)
    outcome: str = ""
    usage: Usage | None = None
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    last_sent: float = 0.0


class _Tokens:
    """Hand-over from the reader task to the publisher: tokens pile up while a publish is in flight."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.done = False
        self.error: DomainError | None = None
        self._arrived = anyio.Event()

    def put(self, batch: list[str]) -> None:
        self.pending.extend(batch)
        self._arrived.set()

    def finish(self, error: DomainError | None = None) -> None:
        self.done, self.error = True, error
        self._arrived.set()

    async def take(self) -> list[str] | None:
        while not self.pending and not self.done:
            await self._arrived.wait()
            self._arrived = anyio.Event()
        taken, self.pending = self.pending, []
        return taken or None


INLINE_CONTEXT_BYTES = 262_144


def _small_file(root: Path, path: str) -> bool:
    """True when the target is a regular file of at most ``INLINE_CONTEXT_BYTES`` (only used to choose where
    the context is built; the build itself reads through the safe-path layer and raises its errors)."""
    try:
        info = os.stat(root.joinpath(*normalize(path)))
    except (OSError, DomainError):
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= INLINE_CONTEXT_BYTES


def sha256_hex(text: str) -> str:
    """Hex sha256 of UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


def message_sha256(messages: list[Message]) -> str:
    """The sha256 the audit log records for a prompt (its messages as compact JSON)."""
    return hashlib.sha256(msgspec.json.encode(messages)).hexdigest()


class AIService:
    """Runs explain/rewrite requests against one ``LLMClient`` and publishes their events."""

    def __init__(
        self,
        llm: LLMClient,
        events: EventPublisher,
        settings: Settings,
        *,
        audit: AuditSink | None = None,
        validate: Validator | None = None,
    ) -> None:
        self.llm = llm
        self.events = events
        self.settings = settings
        self.audit = audit
        self.validate = validate

    async def start(self, kind: Kind, request: AIRequest, tasks: TaskGroup) -> AIJob:
        """Start ``kind`` for ``request`` as a job in ``tasks``; returns once the model's stream has begun.

        For ``rewrite`` ``request.text`` is the instruction (required); ``ai.done`` carries ``diff``,
        ``base_sha256``, ``path`` and ``validation``.
        """
        if kind == "rewrite" and not (request.text or "").strip():
            raise Unprocessable("an instruction is required", code="validation_error")
        job: AIJob = await tasks.start(self._job, _Run(kind, request))
        return job

    async def _context(self, request: AIRequest, must_fit: bool) -> CodeContext:
        storage = request.files
        root = storage.local_root
        if root is None:  # not on this disk: every read is a call to the files' engine, from a worker thread
            remote = partial(
                build_context,
                request.root,
                request.path,
                start_line=request.start_line,
                end_line=request.end_line,
                budget=self.settings.llm_context_chars,
                max_bytes=self.settings.max_file_bytes,
                must_fit=must_fit,
                view=storage.blocking(),
            )
            return await anyio.to_thread.run_sync(remote)
        build = partial(
            build_context,
            root,
            request.path,
            start_line=request.start_line,
            end_line=request.end_line,
            budget=self.settings.llm_context_chars,
            max_bytes=self.settings.max_file_bytes,
            must_fit=must_fit,
        )
        if _small_file(root, request.path):
            return build()  # a few small reads: cheaper here than a thread hop and the GIL contention of many
        return await anyio.to_thread.run_sync(build)

    async def _publish(
        self,
        run: _Run,
        send: MemoryObjectSendStream[AIEvent],
        type_: str,
        data: dict[str, Any],
        error: DomainError | None = None,
        result: AIResult | None = None,
    ) -> None:
        event_id = await self.events.publish(ai_topic(run.request.request_id), type_, data)
        run.last_sent = anyio.current_time()
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(AIEvent(event_id, type_, data, error, result))  # gone consumer: the topic still has it

    async def _job(self, run: _Run, *, task_status: TaskStatus[AIJob]) -> None:
        send, receive = anyio.create_memory_object_stream[AIEvent](math.inf)
        rewrite = run.kind == "rewrite"
        started = False
        with anyio.CancelScope() as scope, send:
            try:
                run.ctx = ctx = await self._context(run.request, must_fit=rewrite)
                messages = (
                    rewrite_messages(ctx, run.request.text or "")
                    if rewrite
                    else explain_messages(ctx, run.request.text)
                )
                run.prompt_sha256, run.model = message_sha256(messages), self.llm.model
                async with self.llm.stream(
                    messages, user_key=str(run.request.user_id), temperature=0.1 if rewrite else 0.2
                ) as stream:
                    info = {
                        "request_id": run.request.request_id,
                        "kind": run.kind,
                        "model": self.llm.model,
                        "path": ctx.file.path,
                        "context_chars": ctx.chars,
                        "masked": ctx.masker.count,
                    }
                    task_status.started(AIJob(run.request, run.kind, info, receive, scope))
                    started = True
                    await self._stream(run, ctx, stream, send)
            except DomainError as exc:
                run.outcome = "" if exc.code in _NOT_AUDITED or run.ctx is None else f"error:{exc.code}"
                if not started:
                    raise
                log.error("AI request %s failed: %s", run.request.request_id, exc.code)
            except Exception:
                if not started:
                    raise
                run.outcome = "error:internal"
                log.exception("AI request %s crashed", run.request.request_id)
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self._publish(run, send, "ai.error", dict(_INTERNAL))
            finally:
                if started and not run.outcome:
                    run.outcome = "cancelled"
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await self._publish(run, send, "ai.error", dict(_CANCELLED))
                if run.outcome and run.ctx is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await self._audit(run, run.ctx)

    async def _stream(
        self, run: _Run, ctx: CodeContext, stream: ChatStream, send: MemoryObjectSendStream[AIEvent]
    ) -> None:
        tokens = _Tokens()

        async def read() -> None:
            try:
                async for batch in stream.batches():
                    tokens.put(batch)
            except DomainError as exc:
                tokens.finish(exc)
            else:
                tokens.finish()

        async def heartbeats() -> None:  # one timer per job, not one per token
            interval = self.settings.sse_heartbeat
            while True:
                wait = run.last_sent + interval - anyio.current_time()
                if wait > 0:
                    await anyio.sleep(wait)
                    continue
                run.last_sent = anyio.current_time()
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    send.send_nowait(PING)

        async with anyio.create_task_group() as tg:
            run.last_sent = anyio.current_time()
            tg.start_soon(read)
            tg.start_soon(heartbeats)
            index = 0
            while (batch := await tokens.take()) is not None:
                text = "".join(batch)
                run.response.append(text)
                await self._publish(run, send, "ai.token", {"text": text, "index": index})
                index += 1
            tg.cancel_scope.cancel()
        try:
            if tokens.error is not None:
                raise tokens.error
            done = await self._done(run, ctx, stream)
        except DomainError as exc:
            run.outcome = f"error:{exc.code}"
            await self._publish(run, send, "ai.error", error_body(exc.code, exc.detail, status=exc.status), exc)
            return
        await self._publish(run, send, "ai.done", msgspec.to_builtins(done), result=done)
        run.outcome = "ok"

    async def _done(self, run: _Run, ctx: CodeContext, stream: ChatStream) -> AIResult:
        run.usage, run.model = stream.usage, stream.model
        if run.kind == "explain":
            return AIResult(usage=stream.usage, model=stream.model, finish_reason=stream.finish_reason)
        if stream.finish_reason == "length":
            raise BadGateway(
                "the model's answer was cut off at CODEHUB_LLM_MAX_TOKENS; select fewer lines",
                code="ai_answer_truncated",
            )
        code = extract_code("".join(run.response))
        if not code.strip() and ctx.selection.text.strip():
            raise BadGateway("the model returned no code", code="ai_no_code")
        new_text = replace_range(ctx.file.content, ctx.start_line, ctx.end_line, ctx.masker.restore(code))
        diff = unified_diff(ctx.file.path, ctx.file.content, new_text)
        validation = await self.validate(run.request.files, diff) if self.validate and diff else None
        run.extra = {"diff_sha256": sha256_hex(diff), "diff_bytes": len(diff.encode())}
        return RewriteResult(
            usage=stream.usage,
            model=stream.model,
            finish_reason=stream.finish_reason,
            path=ctx.file.path,
            diff=diff,
            base_sha256=ctx.file.sha256,
            validation=validation,
        )

    async def _audit(self, run: _Run, ctx: CodeContext) -> None:
        if self.audit is None:
            return
        request, response, usage = run.request, "".join(run.response), run.usage
        details = {
            "model": run.model,
            "prompt_sha256": run.prompt_sha256,
            "response_sha256": sha256_hex(response),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else len(run.response),
            "total_tokens": usage.total_tokens if usage else None,
            "usage_estimated": usage.estimated if usage else True,
            "lines": None if ctx.whole_file else [ctx.start_line, ctx.end_line],
            "context_chars": ctx.chars,
            "masked_secrets": ctx.masker.count,
            "ai_request_id": request.request_id,
            **run.extra,
        }
        try:
            await self.audit(
                AuditEntry(
                    action=f"ai.{run.kind}",
                    actor_id=request.user_id,
                    actor_name=request.actor_name,
                    workspace_id=request.workspace_id,
                    target=ctx.file.path,
                    sha256=sha256_hex(response),
                    size=len(response.encode()),
                    outcome=run.outcome,
                    request_id=request.http_request_id or request.request_id,
                    client_addr=request.client_addr,
                    details=details,
                )
            )
        except Exception:
            log.exception("audit of AI request %s failed", request.request_id)
