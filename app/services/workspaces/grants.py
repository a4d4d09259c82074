"""Workspace grants: a workspace shared with a user or a group, at ``use`` or ``view`` (see docs/sharing.md).

Sharing exists only in subdomain mode (``workspace_domain``): a shared IDE must run on an origin of its own,
or the grantee's browser would run the owner's code with the grantee's hub session. In path mode the
grants API refuses and stored grants give nothing (``level_of`` answers None).

``level_of`` is asked on every relayed request of a grantee, so its answers are cached for ``CACHE_TTL``
seconds and refreshed ahead (one caller asks again near the end while the others use the cached answer), and
the requests that find an entry expired share one query; a grant or revocation drops the
workspace's entries in every process (``forget``, called on the ``workspace.access_changed`` event), and an
answer loaded before it is neither shared nor cached.
"""

from __future__ import annotations

import time
from datetime import datetime

import msgspec
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker, upsert
from app.errors import BadRequest, Conflict, NotFound
from app.models import Group, User, UserGroup, Workspace, WorkspaceGrant, utcnow
from app.services.auth.access import GRANT_LEVELS, REFRESH_AHEAD
from app.services.singleflight import SingleFlight
from app.settings import Settings

CACHE_TTL = 2.0
MAX_CACHED = 10_000
SUBJECT_KINDS = ("user", "group")
NEEDS_DOMAIN = "sharing needs an origin per workspace: set CODEHUB_WORKSPACE_DOMAIN"


class GrantView(msgspec.Struct, kw_only=True):
    """One grant as the API shows it."""

    subject_kind: str
    subject_id: int
    subject_name: str
    level: str
    granted_by: int | None
    created_at: datetime


class Grants:
    """The grants of workspaces: read (cached), added, changed and removed."""

    def __init__(self, sessionmaker: SessionMaker, settings: Settings) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._cache: dict[tuple[str, int], tuple[float, str | None]] = {}
        self._flights: SingleFlight[tuple[str, int], tuple[int, str | None]] = SingleFlight()
        self._generation = 0

    @property
    def enabled(self) -> bool:
        """True in subdomain mode, the only mode in which grants count."""
        return bool(self._settings.workspace_domain)

    def require_enabled(self) -> None:
        """Refuse (409, with the reason) when sharing is off."""
        if not self.enabled:
            raise Conflict(NEEDS_DOMAIN, code="sharing_disabled")

    def cached_level(self, workspace_id: str, user_id: int) -> tuple[bool, str | None]:
        """``(True, level_of(...))`` when the answer is known without a query and needs no refresh (sharing off,
        or cached), else ``(False, None)``: the relay's hot path asks this first, so a cached grant costs no
        coroutine."""
        if not self.enabled:
            return True, None
        known = self._cache.get((workspace_id, user_id))
        if known is not None and known[0] - time.monotonic() > CACHE_TTL * (1 - REFRESH_AHEAD):
            return True, known[1]
        return False, None

    async def level_of(self, workspace_id: str, user_id: int) -> str | None:
        """The highest level granted to ``user_id`` (directly or through a group) on the workspace, or None.

        Refreshed ahead, as tokens are: in the last fifth of an answer's time, the first caller asks again
        while the others go on with the cached answer.
        """
        known, level = self.cached_level(workspace_id, user_id)
        if known:
            return level
        key = (workspace_id, user_id)
        entry = self._cache.get(key)
        if entry is not None and entry[0] > time.monotonic() and self._flights.running(key):
            return entry[1]  # near its end and being refreshed: the others use it meanwhile
        # the requests that find the entry expired share one query; an answer older than the last ``forget``
        # (a grant or revocation meanwhile) is neither shared nor cached
        generation, level = await self._flights.run(
            key, lambda: self._load(workspace_id, user_id), accept=lambda answer: answer[0] == self._generation
        )
        if generation == self._generation:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + CACHE_TTL, level)
        return level

    async def _load(self, workspace_id: str, user_id: int) -> tuple[int, str | None]:
        generation = self._generation
        groups = select(UserGroup.group_id).where(UserGroup.user_id == user_id)
        query = select(WorkspaceGrant.level).where(
            WorkspaceGrant.workspace_id == workspace_id,
            or_(
                (WorkspaceGrant.subject_kind == "user") & (WorkspaceGrant.subject_id == user_id),
                (WorkspaceGrant.subject_kind == "group") & WorkspaceGrant.subject_id.in_(groups),
            ),
        )
        async with self._sessionmaker() as session:
            levels = list((await session.execute(query)).scalars())
        return generation, max(levels, key=lambda name: GRANT_LEVELS.get(name, 0)) if levels else None

    def forget(self, workspace_id: str | None = None) -> None:
        """Drop the cached answers about ``workspace_id`` (all of them when None)."""
        self._generation += 1
        if workspace_id is None:
            self._cache.clear()
        else:
            self._cache = {key: value for key, value in self._cache.items() if key[0] != workspace_id}

    async def of(self, workspace_id: str) -> list[GrantView]:
        """The workspace's grants, users first, then groups, oldest first."""
        self.require_enabled()
        async with self._sessionmaker() as session:
            rows = list(
                (
                    await session.execute(
                        select(WorkspaceGrant)
                        .where(WorkspaceGrant.workspace_id == workspace_id)
                        .order_by(WorkspaceGrant.subject_kind.desc(), WorkspaceGrant.created_at)
                    )
                ).scalars()
            )
            names = await self._names(session, rows)
        return [self._view(row, names.get((row.subject_kind, row.subject_id), "")) for row in rows]

    async def put(self, ws: Workspace, subject_kind: str, subject_id: int, level: str, granted_by: int) -> GrantView:
        """Share ``ws`` with a user or group at ``level`` (a second grant to the same subject changes its level)."""
        self.require_enabled()
        if subject_kind not in SUBJECT_KINDS:
            raise BadRequest("subject_kind must be 'user' or 'group'", code="bad_subject")
        if level not in GRANT_LEVELS:
            raise BadRequest("level must be 'use' or 'view'", code="bad_level")
        if subject_kind == "user" and subject_id == ws.owner_id:
            raise BadRequest("the owner already has the workspace", code="grant_to_owner")
        async with self._sessionmaker() as session:
            user = await session.get(User, subject_id) if subject_kind == "user" else None
            group = await session.get(Group, subject_id) if subject_kind == "group" else None
            name = user.username if user is not None else group.name if group is not None else None
            if name is None:
                raise NotFound(f"no {subject_kind} {subject_id}", code="subject_not_found")
            values = {
                "workspace_id": ws.id,
                "subject_kind": subject_kind,
                "subject_id": subject_id,
                "level": level,
                "granted_by": granted_by,
                "created_at": utcnow(),
            }
            statement = upsert(session, WorkspaceGrant, values, keep=("created_at",))
            try:
                row = (await session.scalars(statement, execution_options={"populate_existing": True})).one()
                await session.commit()
            except IntegrityError as exc:  # the workspace was deleted meanwhile
                raise NotFound(f"no workspace {ws.id}", code="workspace_not_found") from exc
        self.forget(ws.id)
        return self._view(row, name)

    async def subject_named(self, subject_kind: str, name: str) -> int:
        """The id of the user or group called ``name`` (404 when none; 409 when a local group and one synced from
        the identity provider share it: then the id must be given)."""
        wanted = name.strip()
        async with self._sessionmaker() as session:
            if subject_kind == "user":
                found = list(await session.scalars(select(User.id).where(User.username == wanted.lower())))
            elif subject_kind == "group":
                found = list(await session.scalars(select(Group.id).where(Group.name == wanted)))
            else:
                raise BadRequest("subject_kind must be 'user' or 'group'", code="bad_subject")
        if not found:
            raise NotFound(f"no {subject_kind} named {wanted!r}", code="subject_not_found")
        if len(found) > 1:
            raise Conflict(
                f"a local group and one from the identity provider are both named {wanted!r}: give subject_id",
                code="ambiguous_subject",
            )
        return int(found[0])

    async def revoke(self, workspace_id: str, subject_kind: str, subject_id: int) -> None:
        """Remove one grant; 404 when there is none."""
        self.require_enabled()
        async with self._sessionmaker() as session:
            result = await session.execute(
                delete(WorkspaceGrant).where(
                    WorkspaceGrant.workspace_id == workspace_id,
                    WorkspaceGrant.subject_kind == subject_kind,
                    WorkspaceGrant.subject_id == subject_id,
                )
            )
            await session.commit()
        self.forget(workspace_id)
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no grant to {subject_kind} {subject_id}", code="grant_not_found")

    @staticmethod
    async def _names(session: AsyncSession, rows: list[WorkspaceGrant]) -> dict[tuple[str, int], str]:
        names: dict[tuple[str, int], str] = {}
        users = [row.subject_id for row in rows if row.subject_kind == "user"]
        groups = [row.subject_id for row in rows if row.subject_kind == "group"]
        if users:
            for uid, uname in (await session.execute(select(User.id, User.username).where(User.id.in_(users)))).all():
                names[("user", uid)] = uname
        if groups:
            for gid, gname in (await session.execute(select(Group.id, Group.name).where(Group.id.in_(groups)))).all():
                names[("group", gid)] = gname
        return names

    @staticmethod
    def _view(row: WorkspaceGrant, name: str) -> GrantView:
        return GrantView(
            subject_kind=row.subject_kind,
            subject_id=row.subject_id,
            subject_name=name,
            level=row.level,
            granted_by=row.granted_by,
            created_at=row.created_at,
        )
