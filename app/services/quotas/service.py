"""Quotas per subject and their enforcement at create and at start.

A quota row is keyed by ``(subject_kind, subject_id)``: ``user`` today, ``group`` once groups exist. The
effective limits of a user are their own row when there is one, else the most generous of their groups' rows,
else the hub-wide default (``CODEHUB_QUOTA_*``). A ``None`` limit is no limit.

Usage counts every workspace the user owns, and as *running* those ``starting``, ``running`` or ``stopping``
(they hold, or are about to hold, their CPU and memory).

Admission never lets two requests both see room for one: ``admit_create`` and ``admit_start`` first write
the owner's ``users`` row (a no-op ``UPDATE``) in the caller's transaction. On Postgres that row lock makes
every other admission of the same user wait until this transaction commits, and the next one (READ COMMITTED:
a fresh snapshot per statement) counts what it wrote. On SQLite the write takes the database write lock for
the transaction, which serializes all admissions. The caller then performs its insert or its state change in
the same transaction and commits, releasing the lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import msgspec
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker, upsert
from app.errors import Forbidden, NotFound
from app.models import Group, Quota, User, UserGroup, Workspace, WorkspaceState, utcnow
from app.settings import Settings

USER = "user"
GROUP = "group"
ACTIVE = (WorkspaceState.STARTING, WorkspaceState.RUNNING, WorkspaceState.STOPPING)

Source = Literal["user", "group", "default"]
GroupIds = Callable[[AsyncSession, int], Awaitable[Sequence[str]]]
"""The group ids of a user, read in the caller's session (a second session there could wait for a pooled
connection that every caller in a burst holds)."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of one subject; ``None`` is unlimited."""

    max_workspaces: int | None = None
    max_running: int | None = None
    max_cpu: float | None = None
    max_memory_mb: int | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """What a user holds: workspaces owned, and the count, CPUs and memory of the running ones."""

    workspaces: int
    running: int
    cpu: float
    memory_mb: int


class QuotaView(msgspec.Struct, frozen=True, kw_only=True):
    """A user's effective limits, where they come from, their own row (if any) and their usage."""

    user_id: int
    source: Source
    limits: Limits
    own: Limits | None
    usage: Usage


class GroupQuotaView(msgspec.Struct, frozen=True, kw_only=True):
    """A group's quota row (``None``: the group sets none) as its members' candidate limits."""

    group_id: int
    name: str
    quota: Limits | None


def most_generous(candidates: Sequence[Limits]) -> Limits | None:
    """Per limit, the largest of ``candidates`` (``None`` = unlimited wins); ``None`` when there are none."""
    if not candidates:
        return None

    def pick[T: (int, float)](values: list[T | None]) -> T | None:
        return None if any(v is None for v in values) else max(v for v in values if v is not None)

    return Limits(
        max_workspaces=pick([c.max_workspaces for c in candidates]),
        max_running=pick([c.max_running for c in candidates]),
        max_cpu=pick([c.max_cpu for c in candidates]),
        max_memory_mb=pick([c.max_memory_mb for c in candidates]),
    )


def _limits(row: Quota) -> Limits:
    return Limits(
        max_workspaces=row.max_workspaces,
        max_running=row.max_running,
        max_cpu=row.max_cpu,
        max_memory_mb=row.max_memory_mb,
    )


def _number(value: float) -> str:
    return f"{value:g}"


def exceeded(what: str, used: float, limit: float, *, adding: float | None = None, unit: str = "") -> Forbidden:
    """The 403 ``quota_exceeded`` naming the quota and its numbers (``running workspaces: 4 of 4``)."""
    detail = f"quota exceeded: {what}: {_number(used)}{unit} of {_number(limit)}{unit}"
    if adding is not None:
        detail += f" (this workspace needs {_number(adding)}{unit} more)"
    return Forbidden(detail, code="quota_exceeded", quota=what, used=used, limit=limit)


class QuotaService:
    """Quota rows, effective limits, usage, and the admission checks of create and start."""

    def __init__(self, sessionmaker: SessionMaker, settings: Settings, group_ids: GroupIds | None = None) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self.group_ids = group_ids or self.memberships

    @staticmethod
    async def memberships(session: AsyncSession, user_id: int) -> Sequence[str]:
        """The ids of the groups ``user_id`` belongs to (local and synced from the identity provider)."""
        rows = await session.scalars(select(UserGroup.group_id).where(UserGroup.user_id == user_id))
        return [str(group_id) for group_id in rows]

    def default(self) -> Limits:
        """The hub-wide default of a user without a quota of their own or of a group."""
        s = self._settings
        return Limits(
            max_workspaces=s.quota_workspaces,
            max_running=s.quota_running,
            max_cpu=s.quota_cpu,
            max_memory_mb=s.quota_memory,
        )

    async def _row(self, session: AsyncSession, kind: str, subject_id: str) -> Quota | None:
        return await session.get(Quota, (kind, subject_id))

    async def effective(self, session: AsyncSession, user_id: int) -> tuple[Source, Limits]:
        """The limits that apply to ``user_id`` and where they come from."""
        own = await self._row(session, USER, str(user_id))
        if own is not None:
            return "user", _limits(own)
        groups = list(await self.group_ids(session, user_id))
        if groups:
            rows = await session.scalars(select(Quota).where(Quota.subject_kind == GROUP, Quota.subject_id.in_(groups)))
            generous = most_generous([_limits(r) for r in rows])
            if generous is not None:
                return "group", generous
        return "default", self.default()

    async def usage(self, session: AsyncSession, user_id: int, *, excluding: str | None = None) -> Usage:
        """What ``user_id`` holds now (``excluding`` one workspace, the one being started)."""
        owned = await session.scalar(select(func.count(Workspace.id)).where(Workspace.owner_id == user_id))
        query = select(
            func.count(Workspace.id),
            func.coalesce(func.sum(Workspace.cpu), 0.0),
            func.coalesce(func.sum(Workspace.memory_mb), 0),
        ).where(Workspace.owner_id == user_id, Workspace.state.in_(ACTIVE))
        if excluding is not None:
            query = query.where(Workspace.id != excluding)
        running, cpu, memory = (await session.execute(query)).one()
        return Usage(workspaces=owned or 0, running=running or 0, cpu=float(cpu or 0), memory_mb=int(memory or 0))

    async def view(self, user_id: int) -> QuotaView:
        """Effective limits, their source, the user's own row and their usage (404 for an unknown user)."""
        async with self._sessionmaker() as session:
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user {user_id}", code="user_not_found")
            source, limits = await self.effective(session, user_id)
            own = await self._row(session, USER, str(user_id))
            usage = await self.usage(session, user_id)
        return QuotaView(user_id=user_id, source=source, limits=limits, own=_limits(own) if own else None, usage=usage)

    async def set_quota(self, kind: str, subject_id: str, limits: Limits) -> None:
        """Create or replace the quota row of a subject (callers check the subject exists)."""
        values = {
            "subject_kind": kind,
            "subject_id": subject_id,
            "max_workspaces": limits.max_workspaces,
            "max_running": limits.max_running,
            "max_cpu": limits.max_cpu,
            "max_memory_mb": limits.max_memory_mb,
            "updated_at": utcnow(),
        }
        async with self._sessionmaker() as session:
            await session.execute(upsert(session, Quota, values))
            await session.commit()

    async def clear_quota(self, kind: str, subject_id: str) -> bool:
        """Remove a subject's quota row; whether there was one."""
        async with self._sessionmaker() as session:
            result = await session.execute(
                delete(Quota).where(Quota.subject_kind == kind, Quota.subject_id == subject_id)
            )
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def set_user_quota(self, user_id: int, limits: Limits) -> QuotaView:
        """Give a user a quota of their own (404 for an unknown user)."""
        async with self._sessionmaker() as session:
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user {user_id}", code="user_not_found")
        await self.set_quota(USER, str(user_id), limits)
        return await self.view(user_id)

    async def clear_user_quota(self, user_id: int) -> QuotaView:
        """Drop a user's own quota (their groups' or the default applies again)."""
        await self.clear_quota(USER, str(user_id))
        return await self.view(user_id)

    async def group_view(self, group_id: int) -> GroupQuotaView:
        """A group's quota (404 for an unknown group)."""
        async with self._sessionmaker() as session:
            group = await session.get(Group, group_id)
            if group is None:
                raise NotFound(f"no group {group_id}", code="group_not_found")
            row = await self._row(session, GROUP, str(group_id))
        return GroupQuotaView(group_id=group_id, name=group.name, quota=_limits(row) if row else None)

    async def set_group_quota(self, group_id: int, limits: Limits) -> GroupQuotaView:
        """Give a group a quota: its members without their own get the most generous of their groups'."""
        await self.group_view(group_id)
        await self.set_quota(GROUP, str(group_id), limits)
        return await self.group_view(group_id)

    async def clear_group_quota(self, group_id: int) -> GroupQuotaView:
        """Drop a group's quota (404 for an unknown group)."""
        await self.group_view(group_id)
        await self.clear_quota(GROUP, str(group_id))
        return await self.group_view(group_id)

    # -- admission -----------------------------------------------------------------------------------------

    @staticmethod
    async def lock(session: AsyncSession, user_id: int) -> None:
        """Serialize admissions of ``user_id`` until ``session`` commits or rolls back (see the module doc)."""
        await session.execute(update(User).where(User.id == user_id).values(updated_at=User.updated_at))

    async def admit_create(self, session: AsyncSession, user_id: int, *, cpu: float, memory_mb: int) -> None:
        """Inside the creating transaction: lock, then refuse when one more workspace is over the quota, or
        when the new workspace alone could never start within the CPU or memory quota."""
        _, limits = await self.effective(session, user_id)
        if limits == Limits():
            return
        await self.lock(session, user_id)
        if limits.max_workspaces is not None:
            usage = await self.usage(session, user_id)
            if usage.workspaces + 1 > limits.max_workspaces:
                raise exceeded("workspaces", usage.workspaces, limits.max_workspaces)
        if limits.max_cpu is not None and cpu > limits.max_cpu:
            raise exceeded("cpu of running workspaces", 0, limits.max_cpu, adding=cpu)
        if limits.max_memory_mb is not None and memory_mb > limits.max_memory_mb:
            raise exceeded("memory of running workspaces", 0, limits.max_memory_mb, adding=memory_mb, unit=" MiB")

    async def admit_start(self, session: AsyncSession, workspace_id: str) -> None:
        """Inside the transaction that moves ``workspace_id`` to ``starting``: lock its owner, then refuse when
        its start would go over the running, CPU or memory quota (the workspace itself not counted)."""
        row = (
            await session.execute(
                select(Workspace.owner_id, Workspace.cpu, Workspace.memory_mb).where(Workspace.id == workspace_id)
            )
        ).one_or_none()
        if row is None:
            return
        owner_id, cpu, memory_mb = row
        _, limits = await self.effective(session, owner_id)
        if limits == Limits():
            return
        await self.lock(session, owner_id)
        usage = await self.usage(session, owner_id, excluding=workspace_id)
        if limits.max_running is not None and usage.running + 1 > limits.max_running:
            raise exceeded("running workspaces", usage.running, limits.max_running)
        if limits.max_cpu is not None and usage.cpu + cpu > limits.max_cpu + 1e-9:
            raise exceeded("cpu of running workspaces", usage.cpu, limits.max_cpu, adding=cpu)
        if limits.max_memory_mb is not None and usage.memory_mb + memory_mb > limits.max_memory_mb:
            raise exceeded(
                "memory of running workspaces", usage.memory_mb, limits.max_memory_mb, adding=memory_mb, unit=" MiB"
            )
