"""The workspace-list page cache (writes invalidate at once, other processes' events too, TTL bounds the rest),
the single-flight token lookup, and the direct JSON access-log writer."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import structlog
from sqlalchemy import event, update

from app import db
from app.logging_setup import configure_logging, write_access_line
from app.models import Workspace
from app.services.auth.access import Principal
from app.services.auth.users import AuthService
from app.services.workspaces.page_cache import EVERYONE, PageCache
from app.services.workspaces.records import WorkspaceService, publish_lifecycle
from app.streams.events.backend import open_hub
from tests.support.server import Hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


def _render(rows: list[Any], next_cursor: str | None) -> bytes:
    return msgspec.json.encode({"names": [row.name for row in rows], "next": next_cursor})


def test_a_write_after_the_generation_was_read_keeps_the_page_out() -> None:
    cache = PageCache(ttl=60)
    generation = cache.generation(7)
    cache.changed(7)  # committed while the page's query ran
    cache.put("k", generation, b"old")
    assert cache.get("k", 7) is None
    cache.put("k", cache.generation(7), b"new")
    assert cache.get("k", 7) == b"new"
    cache.put("all", cache.generation(EVERYONE), b"everyone")
    cache.changed(8)  # anyone's write makes the everyone-pages stale, not owner 7's
    assert cache.get("all", EVERYONE) is None and cache.get("k", 7) == b"new"


def test_the_cache_holds_a_bounded_number_of_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.services.workspaces.page_cache.MAX_BYTES", 10)
    cache = PageCache(ttl=60)
    cache.put("a", 0, b"12345")
    cache.put("a", 0, b"123456")  # replaces: 6 bytes held
    cache.put("b", 0, b"1234")
    assert cache.get("a", 1) == b"123456" and cache.get("b", 1) == b"1234"
    cache.put("c", 0, b"1")  # 11 > 10: starts over
    assert cache.get("a", 1) is None and cache.get("c", 1) == b"1"


def test_ttl_bounds_a_page_and_zero_disables() -> None:
    cache = PageCache(ttl=0.05)
    cache.put("k", 0, b"page")
    assert cache.get("k", 1) == b"page"
    time.sleep(0.06)
    assert cache.get("k", 1) is None
    assert cache.expired("k", 1) == b"page"  # what concurrent requests get while one refreshes it
    cache.changed(1)
    assert cache.expired("k", 1) is None  # never after a write
    off = PageCache(ttl=0)
    off.put("k", 0, b"page")
    assert off.get("k", 1) is None


async def test_service_pages_follow_local_writes_and_other_processes_events(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, workspace_list_cache_ttl=600)
    engine = db.create_engine(settings)
    try:
        maker = db.create_sessionmaker(engine)
        auth = AuthService(maker, settings)
        user = await auth.create_user("cacher", "password-123")
        me = Principal(user.id, user.username, "user", "t", "api")
        async with open_hub(settings) as hub, anyio.create_task_group() as tasks:
            service = WorkspaceService(maker, settings, hub)
            tasks.start_soon(service.pages.follow_events, hub)
            await anyio.sleep(0.05)
            assert json.loads(await service.list_encoded(me, _render))["names"] == []
            ws, _ = await service.create(me, name="one")
            assert json.loads(await service.list_encoded(me, _render))["names"] == ["one"]  # read-your-writes
            await service.update(me, ws.id, name="two")
            assert json.loads(await service.list_encoded(me, _render))["names"] == ["two"]

            await anyio.sleep(0.2)  # this process's own events arrive too (and bump once more)
            assert json.loads(await service.list_encoded(me, _render))["names"] == ["two"]

            # Another hub process renames it: this process only learns through the lifecycle event.
            async with maker() as session:
                await session.execute(update(Workspace).where(Workspace.id == ws.id).values(name="three"))
                await session.commit()
            assert json.loads(await service.list_encoded(me, _render))["names"] == ["two"]  # cached (TTL 600 s)
            ws.name = "three"
            await publish_lifecycle(hub, ws, "workspace.updated")
            with anyio.fail_after(5):
                while json.loads(await service.list_encoded(me, _render))["names"] != ["three"]:
                    await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()
    finally:
        await engine.dispose()


async def test_api_list_reflects_writes_at_once(hub: Hub) -> None:
    token = await hub.new_user("listcache")
    async with hub.client(token) as client, hub.client() as admin:
        assert (await client.get("/api/workspaces")).json() == {"items": [], "next_cursor": None}
        everyone = {w["id"] for w in (await admin.get("/api/workspaces", params={"all": "true"})).json()["items"]}
        ws = (await client.post("/api/workspaces", json={"name": "cached"})).json()
        r = await client.get("/api/workspaces")
        assert r.headers["content-type"].startswith("application/json")
        assert [w["name"] for w in r.json()["items"]] == ["cached"]
        after = {w["id"] for w in (await admin.get("/api/workspaces", params={"all": "true"})).json()["items"]}
        assert after == everyone | {ws["id"]}
        await client.patch(f"/api/workspaces/{ws['id']}", json={"name": "renamed"})
        assert [w["name"] for w in (await client.get("/api/workspaces")).json()["items"]] == ["renamed"]
        await client.delete(f"/api/workspaces/{ws['id']}")
        assert (await client.get("/api/workspaces")).json()["items"] == []


async def test_concurrent_requests_with_an_expired_token_entry_share_one_lookup(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url)
    engine = db.create_engine(settings)
    lookups = 0

    def count(_conn, _cursor, statement: str, *_: Any) -> None:  # type: ignore[no-untyped-def]
        nonlocal lookups
        if statement.lstrip().upper().startswith("SELECT") and "api_tokens" in statement:
            lookups += 1

    try:
        auth = AuthService(db.create_sessionmaker(engine), settings)
        user = await auth.create_user("flight", "password-123")
        _, raw = await auth.issue_token(user.id)
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        seen: list[Principal] = []

        async def resolve() -> None:
            seen.append(await auth.resolve(raw))

        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(resolve)
        assert lookups == 1 and len(seen) == 20 and {p.user_id for p in seen} == {user.id}
    finally:
        await engine.dispose()


def test_access_lines_are_json_with_the_request_context(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    try:
        configure_logging(make_settings(tmp_path, log_level="info", log_format="json"))
        structlog.contextvars.bind_contextvars(request_id="rid-1", user_id=3)
        assert write_access_line({"method": "GET", "path": "/api/x", "route": "/api/x", "status": 200})
        line = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
        assert line["request_id"] == "rid-1" and line["user_id"] == 3 and line["status"] == 200
        assert line["logger"] == "codehub.access" and line["level"] == "info" and line["event"] == "request"
        assert line["timestamp"].endswith("Z")
        extra = logging.NullHandler()
        logging.getLogger().addHandler(extra)  # e.g. pytest's caplog: the caller falls back to structlog
        assert not write_access_line({"status": 200})
        logging.getLogger().removeHandler(extra)
        configure_logging(make_settings(tmp_path, log_level="warning", log_format="json"))
        assert not write_access_line({"status": 200})  # info is filtered out
        configure_logging(make_settings(tmp_path, log_level="info", log_format="console"))
        assert not write_access_line({"status": 200})
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging(make_settings(tmp_path, log_level="warning"))
