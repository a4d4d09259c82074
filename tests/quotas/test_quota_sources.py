"""Where a user's limits come from, on a real database: their own quota, else the most generous of their
groups', else the hub default."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app import db
from app.db import SessionMaker
from app.models import User, UserGroup
from app.services.auth.identities import ensure_groups
from app.services.auth.users import AuthService
from app.services.quotas.service import GROUP, Limits, QuotaService, most_generous
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


def test_most_generous_takes_the_largest_and_unlimited_wins() -> None:
    a = Limits(max_workspaces=3, max_running=1, max_cpu=2.0, max_memory_mb=None)
    b = Limits(max_workspaces=5, max_running=None, max_cpu=1.0, max_memory_mb=None)
    assert most_generous([a, b]) == Limits(max_workspaces=5, max_running=None, max_cpu=2.0, max_memory_mb=None)
    assert most_generous([]) is None


async def test_own_then_groups_then_default(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, quota_running=1, quota_workspaces=2)
    engine = db.create_engine(settings)
    try:
        sessionmaker = db.create_sessionmaker(engine)
        user = await AuthService(sessionmaker, settings).create_user("src-user", "password-123")
        groups: dict[int, Sequence[str]] = {}

        async def group_ids(session: AsyncSession, user_id: int) -> Sequence[str]:
            return groups.get(user_id, ())

        quotas = QuotaService(sessionmaker, settings, group_ids)
        view = await quotas.view(user.id)
        assert view.source == "default" and view.limits == Limits(max_workspaces=2, max_running=1)

        await quotas.set_quota(GROUP, "devs", Limits(max_running=3, max_cpu=4.0))
        await quotas.set_quota(GROUP, "ops", Limits(max_running=2, max_cpu=8.0, max_workspaces=10))
        await quotas.set_quota(GROUP, "others", Limits(max_running=50))
        groups[user.id] = ["devs", "ops", "unknown"]
        view = await quotas.view(user.id)
        assert view.source == "group"
        assert view.limits == Limits(max_workspaces=None, max_running=3, max_cpu=8.0, max_memory_mb=None)

        own = await quotas.set_user_quota(user.id, Limits(max_running=1))
        assert own.source == "user" and own.limits == Limits(max_running=1) and own.own == Limits(max_running=1)
        assert (await quotas.clear_user_quota(user.id)).source == "group"
        groups[user.id] = ["unknown"]
        assert (await quotas.view(user.id)).source == "default"
    finally:
        await engine.dispose()


@pytest.fixture
async def member(sqlite_url: str, tmp_path: Path) -> AsyncIterator[tuple[QuotaService, SessionMaker, User]]:
    """The quota service on a fresh database with the hub's default quota (1 running), and a user."""
    settings = make_settings(tmp_path, database_url=sqlite_url, quota_running=1)
    engine = db.create_engine(settings)
    try:
        sessionmaker = db.create_sessionmaker(engine)
        user = await AuthService(sessionmaker, settings).create_user("member-user", "password-123")
        yield QuotaService(sessionmaker, settings), sessionmaker, user
    finally:
        await engine.dispose()


async def test_group_quota_follows_real_memberships(member: tuple[QuotaService, SessionMaker, User]) -> None:
    quotas, sessionmaker, user = member
    async with sessionmaker() as session, session.begin():
        (devs,) = await ensure_groups(session, ("devs",), "oidc")
    await quotas.set_quota(GROUP, str(devs.id), Limits(max_running=4))
    assert (await quotas.view(user.id)).source == "default"
    async with sessionmaker() as session, session.begin():
        session.add(UserGroup(user_id=user.id, group_id=devs.id))
    view = await quotas.view(user.id)
    assert view.source == "group" and view.limits.max_running == 4


async def test_a_burst_of_checks_takes_one_connection_each(member: tuple[QuotaService, SessionMaker, User]) -> None:
    """More checks at once than the pool has connections (a burst of creates and starts): each reads the
    user's groups in its own session, so none holds a connection while it waits for another."""
    quotas, _, user = member
    sources: list[str] = []

    async def check() -> None:
        sources.append((await quotas.view(user.id)).source)

    with anyio.fail_after(20):  # the pool gives up on a waiting checkout after 30 s
        async with anyio.create_task_group() as tasks:
            for _ in range(40):
                tasks.start_soon(check)
    assert sources == ["default"] * 40
