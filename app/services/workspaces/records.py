"""Workspace records: create, read, list, update, delete, with visibility rules and lifecycle events."""

from __future__ import annotations

import base64
import binascii
import builtins
import functools
import logging
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import BindParameter, Select, and_, bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import SessionMaker
from app.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound, Unprocessable
from app.events import EventPublisher, lifecycle_topics
from app.models import STORED_STATES, Server, Workspace, WorkspaceState, utcnow
from app.services.auth.access import Level, Principal, may_access, workspace_level
from app.services.quotas.service import QuotaService
from app.services.singleflight import SingleFlight
from app.services.workspaces.grants import Grants
from app.services.workspaces.page_cache import EVERYONE, PageCache
from app.settings import Settings

log = logging.getLogger(__name__)


def workspace_event_data(ws: Workspace, **extra: Any) -> dict[str, Any]:
    """The data of a lifecycle event: enough for a dashboard row without refetching."""
    return {
        "workspace_id": ws.id,
        "name": ws.name,
        "owner_id": ws.owner_id,
        "state": ws.state,
        "reason": ws.state_reason,
        "server_id": ws.server_id,
        **extra,
    }


async def publish_lifecycle(events: EventPublisher, ws: Workspace, type_: str, **extra: Any) -> None:
    """Publish a lifecycle event on the workspace, owner and admin topics; a hub outage is logged, not raised.

    The database row is the truth and is already committed: losing the notification must not fail the call.
    """
    topic, also = lifecycle_topics(ws.id, ws.owner_id)
    try:
        await events.publish(topic, type_, workspace_event_data(ws, **extra), also=also)
    except DomainError as exc:
        log.warning("event %s for workspace %s not published: %s", type_, ws.id, exc.detail)


def split_git_credentials(url: str) -> tuple[str, str]:
    """Return (url safe to store and show, url to clone with). Userinfo never leaves memory."""
    parts = urlsplit(url)
    if parts.scheme in {"http", "https", "ssh"} and (parts.username or parts.password):
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        if parts.scheme == "ssh" and parts.username and not parts.password:
            return url, url  # ssh://git@host: a user name, not a secret
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), url
    return url, url


def check_git_url(url: str, *, allow_file: bool) -> None:
    """Accept https, ssh (URL or scp-like ``user@host:path``) and, when allowed, file:// URLs."""
    if any(ord(c) < 32 for c in url) or url.startswith("-"):
        raise Unprocessable("git_url contains forbidden characters", code="bad_git_url")
    parts = urlsplit(url)
    if parts.scheme in {"https", "http", "ssh"} and parts.hostname:
        return
    if parts.scheme == "file":
        if allow_file:
            return
        raise Forbidden("file:// git URLs are disabled (CODEHUB_ALLOW_FILE_GIT_URLS)", code="git_url_forbidden")
    if not parts.scheme and "@" in url.split(":", 1)[0] and ":" in url:
        return
    raise Unprocessable("git_url must be an https://, ssh:// or user@host:path URL", code="bad_git_url")


def _encode_cursor(ws: Workspace) -> str:
    raw = f"{ws.created_at.isoformat()}|{ws.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, ws_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), ws_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not one this API returned", code="bad_cursor") from None


@functools.cache
def _list_statement(all_users: bool, with_states: bool, with_cursor: bool) -> Select[Any]:
    """The page query, built once per shape with bound parameters (SQLAlchemy then reuses its compiled form).

    Plain columns instead of ORM entities: no identity map or instance state for rows that are only shaped
    into JSON (about half the CPU of a 50-row page).
    """
    query = select(*Workspace.__table__.columns)
    if not all_users:
        query = query.where(Workspace.owner_id == bindparam("owner"))
    if with_states:
        query = query.where(Workspace.state.in_(bindparam("states", expanding=True)))
    if with_cursor:
        created: BindParameter[datetime] = bindparam("created")
        ws_id: BindParameter[str] = bindparam("ws_id")
        query = query.where(
            or_(Workspace.created_at < created, and_(Workspace.created_at == created, Workspace.id < ws_id))
        )
    return query.order_by(Workspace.created_at.desc(), Workspace.id.desc()).limit(bindparam("limit"))


class WorkspaceService:
    """Workspace records. The runtime (start/stop) builds on this; it never touches containers itself."""

    def __init__(
        self, sessionmaker: SessionMaker, settings: Settings, events: EventPublisher, quotas: QuotaService | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self.quotas = quotas
        self._settings = settings
        self._events = events
        engine: AsyncEngine = sessionmaker.kw["bind"]
        # Reads of one statement need no transaction. On Postgres autocommit saves the BEGIN and ROLLBACK
        # round trips; pysqlite opens no transaction for a SELECT anyway (and switching costs thread hops).
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine
        )
        self.pages = PageCache(settings.workspace_list_cache_ttl)
        self.grants = Grants(sessionmaker, settings)
        self._filling: SingleFlight[Hashable, tuple[int, bytes]] = SingleFlight()

    def changed(self, owner_id: int) -> None:
        """A workspace of ``owner_id`` was written (call after the commit): drop their cached list pages."""
        self.pages.changed(owner_id)

    async def get(self, principal: Principal, workspace_id: str, need: Level = Level.MANAGE) -> Workspace:
        """A workspace on which the principal may do ``need`` (see ``workspace_level``: the owner or an admin
        anything, a grantee what the grant allows). 404 for whoever has no access at all (never 403: the
        workspace does not exist for them), 403 for a grantee asking more than the grant allows."""
        async with self._sessionmaker() as session:
            ws = await session.get(Workspace, workspace_id) if len(workspace_id) <= 16 else None
        if ws is None:
            raise NotFound(f"no workspace {workspace_id!r}", code="workspace_not_found")
        level = await self.level(principal, ws)
        if level is None:
            raise NotFound(f"no workspace {workspace_id!r}", code="workspace_not_found")
        if level < need:
            raise Forbidden(
                f"this workspace is shared with you to {level.name.lower()}, which does not allow this",
                code="grant_too_narrow",
            )
        return ws

    async def level(self, principal: Principal, ws: Any) -> Level | None:
        """What ``principal`` may do on ``ws`` (anything with an ``id`` and ``owner_id``); grants are read only
        for someone who is neither its owner nor an admin."""
        if may_access(principal, ws.owner_id):
            return Level.MANAGE
        return workspace_level(principal, ws.owner_id, await self.grants.level_of(ws.id, principal.user_id))

    async def access_changed(self, ws: Workspace, **data: Any) -> None:
        """A grant of ``ws`` was added, changed or removed: drop cached answers here and tell every process
        (the relay and the terminal close connections that lost their access)."""
        self.grants.forget(ws.id)
        await publish_lifecycle(self._events, ws, "workspace.access_changed", **data)

    async def list(
        self,
        principal: Principal,
        *,
        all_users: bool = False,
        states: Sequence[str] = (),
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Any], str | None]:
        """A page of workspaces, newest first; admins may ask for everyone's.

        The rows are read-only records with the ``Workspace`` columns as attributes (not ORM objects): the
        hot path of the dashboard and API clients, one statement, no transaction (see ``_list_statement``).
        """
        if all_users and not principal.is_admin:
            raise Forbidden("only admins may list all workspaces")
        bad = [s for s in states if s not in STORED_STATES]
        if bad:
            raise BadRequest(f"unknown state {bad[0]!r}; one of {', '.join(STORED_STATES)}", code="bad_state")
        params: dict[str, Any] = {"owner": principal.user_id, "states": list(states), "limit": limit + 1}
        if cursor:
            params["created"], params["ws_id"] = _decode_cursor(cursor)
        statement = _list_statement(all_users, bool(states), bool(cursor))
        async with self._reader.connect() as conn:
            rows = (await conn.execute(statement, params)).all()
        next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    async def list_encoded(
        self,
        principal: Principal,
        render: Callable[[builtins.list[Any], str | None], bytes],
        *,
        all_users: bool = False,
        states: Sequence[str] = (),
        limit: int = 50,
        cursor: str | None = None,
    ) -> bytes:
        """``render(*self.list(...))``, served from the page cache while no write of the owner happened and
        for at most ``workspace_list_cache_ttl`` seconds (see ``app.services.workspaces.page_cache``)."""
        if all_users and not principal.is_admin:
            raise Forbidden("only admins may list all workspaces")
        owner = EVERYONE if all_users else principal.user_id
        key = (owner, tuple(states), limit, cursor)
        body = self.pages.get(key, owner)
        if body is not None:
            return body
        # Requests for a page being computed get the expired page when no write happened since (a TTL refresh),
        # else share the new one, unless it was queried before a write they must see (read-your-writes).
        if self._filling.running(key):
            body = self.pages.expired(key, owner)
            if body is not None:
                return body
        seen = self.pages.generation(owner)

        async def fill() -> tuple[int, bytes]:
            generation = self.pages.generation(owner)
            rows, next_cursor = await self.list(
                principal, all_users=all_users, states=states, limit=limit, cursor=cursor
            )
            body = render(rows, next_cursor)
            self.pages.put(key, generation, body)
            return generation, body

        _, body = await self._filling.run(key, fill, lambda filled: filled[0] >= seen)
        return body

    def _check_resources(self, cpu: float | None, memory_mb: int | None) -> None:
        if cpu is not None and cpu > self._settings.max_cpu:
            raise Unprocessable(f"cpu must be at most {self._settings.max_cpu}", code="bad_resources")
        if memory_mb is not None and memory_mb > self._settings.max_memory_mb:
            raise Unprocessable(f"memory_mb must be at most {self._settings.max_memory_mb}", code="bad_resources")

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        image: str | None = None,
        git_url: str | None = None,
        git_ref: str | None = None,
        git_depth: int | None = None,
        server_id: str | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        template: tuple[str, int] | None = None,
        idle_timeout: float | None = None,
    ) -> tuple[Workspace, str | None]:
        """Create a record in state ``created``; returns it and the clone URL (with credentials, memory only).

        ``template`` is the (template id, version) it was made from; ``idle_timeout`` overrides the hub's."""
        self._check_resources(cpu, memory_mb)
        clone_url = None
        stored_url = None
        if git_url:
            check_git_url(git_url, allow_file=self._settings.allow_file_git_urls and principal.is_admin)
            stored_url, clone_url = split_git_credentials(git_url)
        async with self._sessionmaker() as session:
            if self.quotas is not None:
                await self.quotas.admit_create(
                    session,
                    principal.user_id,
                    cpu=cpu or self._settings.default_cpu,
                    memory_mb=memory_mb or self._settings.default_memory_mb,
                )
            limit = self._settings.max_workspaces_per_user
            if limit and not principal.is_admin:
                owned = await session.scalar(
                    select(func.count(Workspace.id)).where(Workspace.owner_id == principal.user_id)
                )
                if (owned or 0) >= limit:
                    raise Forbidden(f"you already own {owned} workspaces (limit {limit})", code="quota_exceeded")
            if server_id is not None and await session.get(Server, server_id) is None:
                raise Unprocessable(f"no server {server_id!r}", code="unknown_server")
            ws = Workspace(
                owner_id=principal.user_id,
                name=name,
                image=image or self._settings.default_image,
                git_url=stored_url,
                git_ref=git_ref,
                git_depth=git_depth,
                server_id=server_id,
                cpu=cpu or self._settings.default_cpu,
                memory_mb=memory_mb or self._settings.default_memory_mb,
                state=WorkspaceState.CREATED,
                template_id=template[0] if template else None,
                template_version=template[1] if template else None,
                idle_timeout=idle_timeout,
            )
            session.add(ws)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"you already have a workspace named {name!r}", code="name_taken") from None
        self.changed(ws.owner_id)
        await publish_lifecycle(self._events, ws, "workspace.created")
        return ws, clone_url

    async def update(
        self,
        principal: Principal,
        workspace_id: str,
        *,
        name: str | None = None,
        image: str | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
    ) -> Workspace:
        """Rename or change image/resources (they apply at the next start)."""
        self._check_resources(cpu, memory_mb)
        await self.get(principal, workspace_id)
        async with self._sessionmaker() as session:
            ws = await session.get(Workspace, workspace_id)
            if ws is None:
                raise NotFound(f"no workspace {workspace_id!r}", code="workspace_not_found")
            for field, value in (("name", name), ("image", image), ("cpu", cpu), ("memory_mb", memory_mb)):
                if value is not None:
                    setattr(ws, field, value)
            ws.updated_at = utcnow()
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"you already have a workspace named {name!r}", code="name_taken") from None
        self.changed(ws.owner_id)
        await publish_lifecycle(self._events, ws, "workspace.updated")
        return ws

    async def delete_record(self, principal: Principal, workspace_id: str) -> Workspace:
        """Delete the row (the runtime removes containers first) and publish ``workspace.deleted``."""
        ws = await self.get(principal, workspace_id)
        async with self._sessionmaker() as session:
            row = await session.get(Workspace, workspace_id)
            if row is not None:
                await session.delete(row)
                await session.commit()
        self.changed(ws.owner_id)
        ws.state = WorkspaceState.DELETED
        await publish_lifecycle(self._events, ws, "workspace.deleted")
        return ws
