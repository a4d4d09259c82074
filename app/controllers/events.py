"""SSE endpoints: ``/api/events`` (many topics on one connection) and ``/api/workspaces/{id}/events``.

Topics are authorized at subscribe time: a user may read ``user:<own id>``, ``workspace:<id>``,
``workspace:<id>:logs`` and ``workspace:<id>:exec`` of workspaces they own or that are shared with them
(``view``; ``use`` for exec), and ``ai:<id>`` of their AI requests (``ctx.ai_owners`` knows who started
which); admins may read every topic, ``admin`` included. Unknown workspaces and AI requests are 404, other
refusals 403. A grantee's stream is watched (``Sessions.watch``) for as long as it runs: when a grant is
revoked (in any hub process) it ends with a final ``stream.reset`` (reason ``access_revoked``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import HeaderParameter, Parameter, QueryParameter
from litestar.response import Stream

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.errors import BadRequest, Forbidden
from app.events import ADMIN_TOPIC, workspace_topic
from app.models import Workspace
from app.services.ai.owners import authorize_follower
from app.services.auth.access import Level, Principal, may_access
from app.services.workspaces.records import WorkspaceService
from app.streams.events.direct_http import direct_writer
from app.streams.events.fanout import ACCESS_REVOKED
from app.streams.events.hub import subscription_topics
from app.streams.events.sse import MEDIA_TYPE, SSE_HEADERS, Guard, event_stream

WORKSPACE_SUFFIXES = ("", "logs", "exec")


@dataclass(frozen=True, slots=True)
class Shared:
    """A workspace topic read through a grant: the stream needs ``need`` on ``ws`` for as long as it runs."""

    ws: Workspace
    need: Level


async def authorize_topic(
    topic: str, principal: Principal, ctx: AppContext, workspaces: WorkspaceService
) -> Shared | None:
    """Raise unless ``principal`` may subscribe to ``topic`` (404 for unknown workspaces, else 403); what a
    grantee's access rests on, else None."""
    kind, _, rest = topic.partition(":")
    if kind == "workspace":
        workspace_id, _, suffix = rest.partition(":")
        if suffix not in WORKSPACE_SUFFIXES or not workspace_id:
            raise BadRequest(f"unknown workspace topic {topic!r}", code="bad_topic")
        # The exec topic carries what commands print: for those who may run them.
        need = Level.USE if suffix == "exec" else Level.VIEW
        ws = await workspaces.get(principal, workspace_id, need)
        return None if may_access(principal, ws.owner_id) else Shared(ws, need)
    if kind == "ai":
        await authorize_follower(ctx.ai_owners, principal, rest)
        return None
    if principal.is_admin:
        return None
    if kind == "user" and rest == str(principal.user_id):
        return None
    if topic == ADMIN_TOPIC:
        raise Forbidden("the admin topic is for admins", code="admin_required")
    raise Forbidden(f"not allowed to subscribe to {topic!r}", code="topic_forbidden")


def grant_guard(ctx: AppContext, principal: Principal, shared: list[Shared]) -> Guard | None:
    """For a grantee's stream: watch it under each shared workspace while it runs (a revocation ends it), and
    check access once more after registering (a revocation just before would otherwise be missed)."""
    if not shared:
        return None

    @asynccontextmanager
    async def guard(end: Callable[[str], None]) -> AsyncIterator[None]:
        def revoked() -> None:
            end(ACCESS_REVOKED)

        with ExitStack() as watching:
            for item in shared:
                watching.enter_context(
                    ctx.relay.sessions.watch(item.ws.id, item.ws.owner_id, principal, item.need, revoked)
                )
            for item in shared:
                level = await ctx.workspaces.level(principal, item.ws)
                if level is None or level < item.need:
                    revoked()
            yield

    return guard


def _stream(
    request: Request[Any, Any, Any],
    ctx: AppContext,
    topics: tuple[str, ...],
    header_id: str | None,
    last_event_id: str | None,
    since: str | None,
    guard: Guard | None = None,
) -> Stream:
    if since not in (None, "", "earliest"):
        raise BadRequest("since must be 'earliest'", code="bad_since")
    cursor = header_id or last_event_id or None
    body = event_stream(
        ctx.events,
        topics,
        last_event_id=cursor,
        since_earliest=since == "earliest" and cursor is None,
        retry_ms=ctx.settings.sse_retry_ms,
        direct=direct_writer(request.scope),
        guard=guard,
    )
    return Stream(body, media_type=MEDIA_TYPE, headers=SSE_HEADERS)


LAST_EVENT_ID = Annotated[
    str | None,
    Parameter(max_length=40, description="resume after this event id (first connection; the header wins)"),
]
LAST_EVENT_ID_HEADER = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", max_length=40, description="sent by EventSource on reconnect"),
]
SINCE = Annotated[str | None, Parameter(description="'earliest': replay every event history still holds")]


class EventsController(Controller):
    """Server-Sent Events: replay from ``Last-Event-ID``, then live; heartbeats; ``stream.reset`` on gaps."""

    tags = ["events"]

    @get(
        "/api/events",
        media_type=MEDIA_TYPE,
        operation_id="streamEvents",
        responses=error_responses(400, 401, 403, 404),
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
        topics: Annotated[list[str], QueryParameter(name="topic", description="topic to follow (repeatable)")],
        last_event_id: LAST_EVENT_ID = None,
        last_event_id_header: LAST_EVENT_ID_HEADER = None,
        since: SINCE = None,
    ) -> Stream:
        """Events of several topics on one connection (browsers allow six per origin), as SSE."""
        names = subscription_topics(topics)
        shared = [s for topic in names if (s := await authorize_topic(topic, principal, ctx, workspaces))]
        guard = grant_guard(ctx, principal, shared)
        return _stream(request, ctx, names, last_event_id_header, last_event_id, since, guard)

    @get(
        "/api/workspaces/{workspace_id:str}/events",
        media_type=MEDIA_TYPE,
        operation_id="streamWorkspaceEvents",
        responses=error_responses(401, 404),
    )
    async def workspace_events(
        self,
        request: Request[Any, Any, Any],
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
        workspace_id: str,
        last_event_id: LAST_EVENT_ID = None,
        last_event_id_header: LAST_EVENT_ID_HEADER = None,
        since: SINCE = None,
    ) -> Stream:
        """Lifecycle events of one workspace, as SSE."""
        topic = workspace_topic(workspace_id)
        shared = await authorize_topic(topic, principal, ctx, workspaces)
        guard = grant_guard(ctx, principal, [shared] if shared else [])
        return _stream(request, ctx, (topic,), last_event_id_header, last_event_id, since, guard)

    @get(
        "/api/admin/events/stats",
        guards=[requires_admin],
        operation_id="adminEventStats",
        responses=error_responses(401, 403),
    )
    async def stats(self, ctx: AppContext) -> dict[str, Any]:
        """This hub process's event counters (subscribers, published, delivered, dropped, …)."""
        return ctx.events.stats()
