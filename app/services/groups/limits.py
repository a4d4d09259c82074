"""Group limits on templates and servers: an empty list lets everyone in, otherwise a user must be a member of
at least one listed group. Memberships are read from the database at every check (no cache), so adding or
removing a member takes effect on that user's next request. A listed group that no longer exists matches
nobody: a limit never opens up by itself."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Unprocessable
from app.models import Group, UserGroup

MAX_ALLOWED_GROUPS = 100


async def member_group_ids(session: AsyncSession, user_id: int) -> frozenset[int]:
    """The ids of every group (local or synced) ``user_id`` is in now."""
    rows = await session.scalars(select(UserGroup.group_id).where(UserGroup.user_id == user_id))
    return frozenset(rows)


def admits(allowed: Sequence[int] | None, member_of: frozenset[int]) -> bool:
    """True when ``allowed`` is empty or shares a group with ``member_of``."""
    return not allowed or not member_of.isdisjoint(allowed)


async def checked_group_ids(session: AsyncSession, ids: Sequence[int]) -> list[int]:
    """``ids`` without duplicates, in order; 422 naming the first id that is not a group."""
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > MAX_ALLOWED_GROUPS:
        raise Unprocessable(f"at most {MAX_ALLOWED_GROUPS} groups may be allowed", code="too_many_groups")
    if not wanted:
        return []
    found = set(await session.scalars(select(Group.id).where(Group.id.in_(wanted))))
    for group_id in wanted:
        if group_id not in found:
            raise Unprocessable(f"no group with id {group_id}", code="unknown_group")
    return wanted
