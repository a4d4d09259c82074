"""Quotas under concurrency, on SQLite and on a fresh Postgres database: 20 starts at once with room for 3
leave at most 3 workspaces starting or running, and 20 creates at once with room for 5 make exactly 5."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from tests.support.lifecycle import create, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio

ACTIVE = {"starting", "running", "stopping"}


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub running workspaces as local processes (the fake IDE)."""
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=db_url,
        runtime="local",
        local_ide_command=fake_ide_command(),
        start_timeout=30,
        default_memory_mb=128,
    )
    async with running_hub(settings) as running:
        yield running


async def new_user(hub: Hub, prefix: str, **limits: float) -> str:
    """A user with a quota of their own; their token."""
    token = await hub.new_user(f"{prefix}-{secrets.token_hex(3)}")
    async with hub.client(token) as client:
        user_id = (await client.get("/api/auth/me")).json()["id"]
    async with hub.client() as admin:
        r = await admin.put(f"/api/admin/users/{user_id}/quota", json=limits)
        assert r.status_code == 200, r.text
    return token


async def all_at_once(count: int, call: object) -> list[httpx.Response]:
    """Run ``call(i)`` for every ``i`` at once; the responses in order."""
    answers: list[httpx.Response | None] = [None] * count
    ready = anyio.Event()

    async def one(i: int) -> None:
        await ready.wait()
        answers[i] = await call(i)  # type: ignore[operator]

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
        await anyio.sleep(0.05)
        ready.set()
    return [a for a in answers if a is not None]


async def test_twenty_concurrent_starts_never_exceed_three_running(hub: Hub) -> None:
    token = await new_user(hub, "qrace", max_running=3)
    limits = httpx.Limits(max_connections=40)
    async with hub.client(token, limits=limits) as client:
        ids = [(await create(client, f"r{i}", cpu=0.25))["id"] for i in range(20)]

        answers = await all_at_once(20, lambda i: client.post(f"/api/workspaces/{ids[i]}/start"))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [202] * 3 + [403] * 17, [r.text for r in answers if r.status_code not in (202, 403)]
        for r in answers:
            if r.status_code == 403:
                assert r.json()["error"] == "quota_exceeded" and r.json()["detail"].endswith(
                    "running workspaces: 3 of 3"
                )

        states = [(await client.get(f"/api/workspaces/{ws_id}")).json()["state"] for ws_id in ids]
        assert sum(state in ACTIVE for state in states) == 3
        usage = (await client.get("/api/auth/quota")).json()["usage"]
        assert usage["running"] == 3 and usage["cpu"] == 0.75 and usage["workspaces"] == 20

        started = [ws_id for ws_id, r in zip(ids, answers, strict=True) if r.status_code == 202]
        for ws_id in started:
            assert (await wait_state(client, ws_id, {"running", "failed"}))["state"] == "running"
        # a second wave, while three run: every one refused
        waiting = [ws_id for ws_id in ids if ws_id not in started]
        answers = await all_at_once(17, lambda i: client.post(f"/api/workspaces/{waiting[i]}/start"))
        assert {r.status_code for r in answers} == {403}
        await all_at_once(3, lambda i: client.post(f"/api/workspaces/{started[i]}/stop"))
        assert (await client.get("/api/auth/quota")).json()["usage"]["running"] == 0


async def test_twenty_concurrent_creates_make_exactly_five(hub: Hub) -> None:
    token = await new_user(hub, "qmake", max_workspaces=5)
    async with hub.client(token, limits=httpx.Limits(max_connections=40)) as client:
        answers = await all_at_once(20, lambda i: client.post("/api/workspaces", json={"name": f"c{i}"}))
        assert sorted(r.status_code for r in answers) == [201] * 5 + [403] * 15
        assert (await client.get("/api/auth/quota")).json()["usage"]["workspaces"] == 5
        assert len((await client.get("/api/workspaces")).json()["items"]) == 5


async def test_a_quota_set_and_cleared_at_once_never_fails(hub: Hub) -> None:
    """Admins setting and clearing one group's quota at the same moment: every answer is 200 (a set is one
    upsert, so it neither collides with another set's insert nor updates a row a clear removed meanwhile)."""
    async with hub.client() as admin:
        r = await admin.post("/api/admin/groups", json={"name": f"race-{secrets.token_hex(3)}"})
        assert r.status_code == 201, r.text
        quota = f"/api/admin/groups/{r.json()['id']}/quota"
        for _round in range(3):

            async def one(i: int, admin: httpx.AsyncClient = admin) -> httpx.Response:
                if i % 3 == 2:
                    return await admin.delete(quota)
                return await admin.put(quota, json={"max_workspaces": i + 1})

            answers = await all_at_once(12, one)
            assert [a.status_code for a in answers] == [200] * 12, [a.text for a in answers if a.status_code != 200]
        await admin.put(quota, json={"max_running": 7})
        assert (await admin.get(quota)).json()["quota"]["max_running"] == 7
