"""The grant answers on the relay's hot path, on a real database: requests that find the cached answer expired
share one query, one near its end is refreshed by one caller while the others use it, and an answer loaded
before a revocation is neither shared with later callers nor cached."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import delete, event

from app import db
from app.models import User, Workspace, WorkspaceGrant
from app.services.workspaces import grants as grants_module
from app.services.workspaces.grants import Grants
from tests.support.databases import fresh_database
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
def grants_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each kind (migrations run their own event loop: a sync fixture)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def shared(grants_db: str, tmp_path: Path) -> AsyncIterator[tuple[Grants, Any, list[str]]]:
    """Grants on a database where workspace ``w1`` of user 1 is shared with user 2 at ``use``; the engine's
    statements are recorded."""
    settings = make_settings(tmp_path, database_url=grants_db, workspace_domain="ws.localhost", public_url="http://h")
    engine = db.create_engine(settings)
    sessionmaker = db.create_sessionmaker(engine)
    async with sessionmaker() as session:
        session.add_all(
            [User(id=1, username="owner", password_hash="x"), User(id=2, username="guest", password_hash="x")]
        )
        await session.flush()
        session.add(Workspace(id="w1", owner_id=1, name="w", image="img", runtime="local"))
        await session.flush()
        session.add(WorkspaceGrant(workspace_id="w1", subject_kind="user", subject_id=2, level="use", granted_by=1))
        await session.commit()
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "workspace_grants" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield Grants(sessionmaker, settings), sessionmaker, statements
    finally:
        await engine.dispose()


async def test_expired_answers_are_refilled_by_one_query(shared: tuple[Grants, Any, list[str]]) -> None:
    grants, _, statements = shared
    answers: list[str | None] = []

    async def ask() -> None:
        answers.append(await grants.level_of("w1", 2))

    async with anyio.create_task_group() as tasks:
        for _ in range(50):
            tasks.start_soon(ask)
    assert answers == ["use"] * 50
    assert len(statements) == 1


async def test_an_answer_near_its_end_is_refreshed_while_the_others_use_it(
    shared: tuple[Grants, Any, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    grants, _, statements = shared
    monkeypatch.setattr(grants_module, "CACHE_TTL", 3.0)
    assert await grants.level_of("w1", 2) == "use"
    await anyio.sleep(2.6)  # into the answer's last fifth (0.6 s), with room for a slow machine
    assert grants.cached_level("w1", 2) == (False, None)  # the hot path sends it to level_of
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(grants.level_of, "w1", 2)  # the one caller that refreshes
        await anyio.sleep(0)
        other = grants.level_of("w1", 2)
        with pytest.raises(StopIteration) as answered:  # answers without awaiting anything: no wait, no query
            other.send(None)
        assert answered.value.value == "use"
    assert len(statements) == 2


async def test_an_answer_loaded_before_a_revocation_is_not_kept(shared: tuple[Grants, Any, list[str]]) -> None:
    grants, sessionmaker, _ = shared
    late: list[str | None] = []

    async def ask_then_revoke() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: grants.level_of("w1", 2))  # the flight that loads "use"
            await anyio.sleep(0)
            async with sessionmaker() as session:
                await session.execute(delete(WorkspaceGrant))
                await session.commit()
            grants.forget("w1")  # as the access_changed event does
            late.append(await grants.level_of("w1", 2))  # must not take the first flight's answer

    await ask_then_revoke()
    assert late == [None]
    assert await grants.level_of("w1", 2) is None
