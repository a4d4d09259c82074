"""Groups for admins: every group with its member count, local groups made, renamed and deleted here, and
their members. Groups synced from the OpenID provider (``source`` ``oidc``) are read-only: their name is the
provider's and their members are set at every sign-in, so a hand edit would be undone or, worse, disagree
with the provider until then; those writes are refused with 409 and the reason."""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker
from app.errors import Conflict, NotFound
from app.models import Group, Quota, Server, Template, User, UserGroup
from app.services.quotas.service import GROUP as QUOTA_GROUP

LOCAL_SOURCE = "local"


class GroupView(msgspec.Struct, kw_only=True):
    """A group as the admin API shows it."""

    id: int
    name: str
    source: str
    read_only: bool
    member_count: int
    created_at: datetime

    @classmethod
    def of(cls, group: Group, member_count: int) -> GroupView:
        """Shape a group row and its member count."""
        return cls(
            id=group.id,
            name=group.name,
            source=group.source,
            read_only=group.source != LOCAL_SOURCE,
            member_count=member_count,
            created_at=group.created_at,
        )


class MemberView(msgspec.Struct, kw_only=True):
    """A member of a group."""

    id: int
    username: str
    role: str
    disabled: bool


def _read_only(group: Group, what: str) -> Conflict:
    return Conflict(
        f"group {group.name!r} comes from the identity provider: its {what} follow the provider and are synced "
        "at every sign-in; change it there, or make a local group",
        code="group_read_only",
    )


class GroupService:
    """Admin operations on groups and memberships."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sessionmaker = sessionmaker

    @staticmethod
    async def _group(session: AsyncSession, group_id: int) -> Group:
        group = await session.get(Group, group_id)
        if group is None:
            raise NotFound(f"no group {group_id}", code="group_not_found")
        return group

    @staticmethod
    async def _count(session: AsyncSession, group_id: int) -> int:
        return int(await session.scalar(select(func.count()).where(UserGroup.group_id == group_id)) or 0)

    async def list_groups(self) -> list[GroupView]:
        """Every group with its member count, by source then name."""
        counts = select(UserGroup.group_id, func.count().label("n")).group_by(UserGroup.group_id).subquery("counts")
        query = (
            select(Group, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.group_id == Group.id)
            .order_by(Group.source, Group.name)
        )
        async with self._sessionmaker() as session:
            rows = (await session.execute(query)).all()
        return [GroupView.of(group, int(n)) for group, n in rows]

    async def get(self, group_id: int) -> GroupView:
        """One group with its member count (404 when unknown)."""
        async with self._sessionmaker() as session:
            group = await self._group(session, group_id)
            return GroupView.of(group, await self._count(session, group_id))

    async def create(self, name: str) -> GroupView:
        """A new local group (409 when a local group has that name)."""
        group = Group(name=name, source=LOCAL_SOURCE)
        async with self._sessionmaker() as session:
            session.add(group)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"a local group named {name!r} exists", code="group_name_taken") from None
        return GroupView.of(group, 0)

    async def rename(self, group_id: int, name: str) -> GroupView:
        """Rename a local group (409 for a synced group or a taken name)."""
        async with self._sessionmaker() as session:
            group = await self._group(session, group_id)
            if group.source != LOCAL_SOURCE:
                raise _read_only(group, "name")
            group.name = name
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"a local group named {name!r} exists", code="group_name_taken") from None
            return GroupView.of(group, await self._count(session, group_id))

    async def delete(self, group_id: int) -> str:
        """Delete a local group, its memberships and its quota; 409 for a synced group or one a template or server is
        limited to (deleting it would lock those out without saying so). Returns its name."""
        async with self._sessionmaker() as session:
            group = await self._group(session, group_id)
            if group.source != LOCAL_SOURCE:
                raise _read_only(group, "existence and members")
            users = await self._limited(session, group_id)
            if users:
                raise Conflict(
                    f"group {group.name!r} is in the allowed groups of {', '.join(users)}; remove it there first",
                    code="group_in_use",
                )
            await session.execute(delete(UserGroup).where(UserGroup.group_id == group_id))
            # SQLite may hand a deleted id to the next group: nothing may keep pointing at this one
            await session.execute(
                delete(Quota).where(Quota.subject_kind == QUOTA_GROUP, Quota.subject_id == str(group_id))
            )
            await session.delete(group)
            await session.commit()
            return group.name

    @staticmethod
    async def _limited(session: AsyncSession, group_id: int) -> list[str]:
        templates = await session.execute(select(Template.name, Template.allowed_groups))
        servers = await session.execute(select(Server.name, Server.allowed_groups))
        found = [f"template {name!r}" for name, allowed in templates if group_id in (allowed or [])]
        found += [f"server {name!r}" for name, allowed in servers if group_id in (allowed or [])]
        return found

    async def members(self, group_id: int) -> list[MemberView]:
        """The members of a group, by username."""
        async with self._sessionmaker() as session:
            await self._group(session, group_id)
            rows = await session.scalars(
                select(User)
                .join(UserGroup, UserGroup.user_id == User.id)
                .where(UserGroup.group_id == group_id)
                .order_by(User.username)
            )
            return [MemberView(id=u.id, username=u.username, role=u.role, disabled=u.disabled) for u in rows]

    async def add_member(self, group_id: int, user_id: int) -> None:
        """Add a user to a local group (nothing changes when they are in it already)."""
        async with self._sessionmaker() as session:
            group = await self._group(session, group_id)
            if group.source != LOCAL_SOURCE:
                raise _read_only(group, "members")
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user {user_id}", code="user_not_found")
            if await session.get(UserGroup, (user_id, group_id)) is not None:
                return
            session.add(UserGroup(user_id=user_id, group_id=group_id))
            try:
                await session.commit()
            except IntegrityError:  # added at the same moment by another request, or the group just went away
                await session.rollback()
                await self._group(session, group_id)

    async def remove_member(self, group_id: int, user_id: int) -> None:
        """Remove a user from a local group (nothing changes when they are not in it)."""
        async with self._sessionmaker() as session:
            group = await self._group(session, group_id)
            if group.source != LOCAL_SOURCE:
                raise _read_only(group, "members")
            await session.execute(delete(UserGroup).where(UserGroup.group_id == group_id, UserGroup.user_id == user_id))
            await session.commit()

    async def groups_of(self, user_id: int) -> list[GroupView]:
        """The groups a user is in, with member counts (404 when the user is unknown)."""
        async with self._sessionmaker() as session:
            if await session.get(User, user_id) is None:
                raise NotFound(f"no user {user_id}", code="user_not_found")
            ids = list(await session.scalars(select(UserGroup.group_id).where(UserGroup.user_id == user_id)))
        return [view for view in await self.list_groups() if view.id in ids]
