"""Quotas over real HTTP on SQLite and Postgres (local runtime, fake IDE): refusals at create and at start
with the quota and its numbers, usage after stop and delete, the hub default, and who may manage them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.lifecycle import create, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub whose default lets a user own 3 workspaces and run 2 (local processes, fake IDE)."""
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=db_url,
        runtime="local",
        local_ide_command=fake_ide_command(),
        start_timeout=20,
        default_cpu=1.0,
        default_memory_mb=256,
        quota_workspaces=3,
        quota_running=2,
    )
    async with running_hub(settings) as running:
        yield running


async def user(hub: Hub, prefix: str) -> tuple[int, str]:
    """A new user's id and token."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    token = await hub.new_user(name)
    async with hub.client(token) as client:
        return (await client.get("/api/auth/me")).json()["id"], token


def refused(r: httpx.Response, quota: str, used: float, limit: float) -> None:
    """A 403 quota_exceeded naming ``quota`` as ``used of limit``."""
    assert r.status_code == 403, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == "quota_exceeded"
    assert body["quota"] == quota and body["used"] == used and body["limit"] == limit
    assert f"{quota}: {used:g}" in body["detail"] and f"of {limit:g}" in body["detail"]


async def start(client: httpx.AsyncClient, ws_id: str) -> httpx.Response:
    return await client.post(f"/api/workspaces/{ws_id}/start")


async def test_the_default_applies_and_is_shown(hub: Hub) -> None:
    _, token = await user(hub, "qdef")
    async with hub.client(token) as client:
        mine = (await client.get("/api/auth/quota")).json()
        assert mine["source"] == "default" and mine["own"] is None
        assert mine["limits"] == {"max_workspaces": 3, "max_running": 2, "max_cpu": None, "max_memory_mb": None}
        assert mine["usage"] == {"workspaces": 0, "running": 0, "cpu": 0, "memory_mb": 0}
        ids = [(await create(client, f"d{i}"))["id"] for i in range(3)]
        refused(await client.post("/api/workspaces", json={"name": "d3"}), "workspaces", 3, 3)

        for ws_id in ids[:2]:
            assert (await start(client, ws_id)).status_code == 202
        refused(await start(client, ids[2]), "running workspaces", 2, 2)
        usage = (await client.get("/api/auth/quota")).json()["usage"]
        assert usage == {"workspaces": 3, "running": 2, "cpu": 2.0, "memory_mb": 512}
        assert (await client.get(f"/api/workspaces/{ids[2]}")).json()["state"] == "created"

        await wait_state(client, ids[0], {"running"})
        assert (await client.post(f"/api/workspaces/{ids[0]}/stop")).json()["state"] == "stopped"
        assert (await client.get("/api/auth/quota")).json()["usage"]["running"] == 1
        assert (await start(client, ids[2])).status_code == 202
        refused(await start(client, ids[0]), "running workspaces", 2, 2)

        assert (await client.delete(f"/api/workspaces/{ids[1]}")).status_code in (200, 202, 204)
        usage = (await client.get("/api/auth/quota")).json()["usage"]
        assert usage["workspaces"] == 2 and usage["running"] == 1
        assert (await start(client, ids[0])).status_code == 202
        assert (await client.post("/api/workspaces", json={"name": "d4"})).status_code == 201
        for ws_id in (ids[0], ids[2]):
            await wait_state(client, ws_id, {"running"})
            await client.post(f"/api/workspaces/{ws_id}/stop")


async def test_an_own_quota_replaces_the_default_and_limits_cpu_and_memory(hub: Hub) -> None:
    user_id, token = await user(hub, "qown")
    async with hub.client() as admin:
        r = await admin.put(f"/api/admin/users/{user_id}/quota", json={"max_cpu": 2.5, "max_memory_mb": 1024})
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "user" and r.json()["limits"]["max_workspaces"] is None
    async with hub.client(token) as client:
        big = await client.post("/api/workspaces", json={"name": "big", "cpu": 3})
        refused(big, "cpu of running workspaces", 0, 2.5)
        refused(
            await client.post("/api/workspaces", json={"name": "huge", "memory_mb": 2048}),
            "memory of running workspaces",
            0,
            1024,
        )
        a = await create(client, "a", cpu=1.5, memory_mb=256)
        b = await create(client, "b", cpu=1.5, memory_mb=256)
        c = await create(client, "c", cpu=0.5, memory_mb=800)
        d = await create(client, "d", cpu=0.5, memory_mb=256)  # four workspaces: over the default, not their own
        assert (await start(client, a["id"])).status_code == 202
        r = await start(client, b["id"])
        refused(r, "cpu of running workspaces", 1.5, 2.5)
        assert "needs 1.5 more" in r.json()["detail"]
        refused(await start(client, c["id"]), "memory of running workspaces", 256, 1024)
        assert (await start(client, d["id"])).status_code == 202
        for ws in (a, d):
            await wait_state(client, ws["id"], {"running"})
            await client.post(f"/api/workspaces/{ws['id']}/stop")

    async with hub.client() as admin:
        r = await admin.delete(f"/api/admin/users/{user_id}/quota")
        assert r.status_code == 200 and r.json()["source"] == "default" and r.json()["own"] is None
        assert r.json()["usage"]["workspaces"] == 4 and r.json()["usage"]["running"] == 0
    async with hub.client(token) as client:
        refused(await client.post("/api/workspaces", json={"name": "e"}), "workspaces", 4, 3)


async def test_only_admins_manage_quotas(hub: Hub) -> None:
    user_id, token = await user(hub, "qatk")
    other_id, _ = await user(hub, "qvic")
    async with hub.client(token) as client:
        for target in (user_id, other_id):
            url = f"/api/admin/users/{target}/quota"
            assert (await client.put(url, json={"max_running": 1000, "max_workspaces": 1000})).status_code == 403
            assert (await client.delete(url)).status_code == 403
            assert (await client.get(url)).status_code == 403
        assert (await client.put("/api/auth/quota", json={"max_running": 1000})).status_code in (404, 405)
        assert (await client.get("/api/auth/quota")).json()["source"] == "default"
    async with hub.client("") as anon:
        assert (await anon.get("/api/auth/quota")).status_code == 401
        assert (await anon.put(f"/api/admin/users/{user_id}/quota", json={})).status_code == 401
    async with hub.client() as admin:
        assert (await admin.get(f"/api/admin/users/{user_id}/quota")).json()["own"] is None
        assert (await admin.put("/api/admin/users/999999/quota", json={"max_running": 1})).status_code == 404
        assert (await admin.get("/api/admin/users/999999/quota")).status_code == 404
        url = f"/api/admin/users/{user_id}/quota"
        bad_bodies = (
            {"max_running": -1},
            {"max_cpu": "lots"},
            {"max_running": 1, "running": 1},
            {"max_workspaces": 10**9},
        )
        for bad in bad_bodies:
            r = await admin.put(url, json=bad)
            assert r.status_code in (400, 422) and "error" in r.json(), (bad, r.text)
        assert (await admin.get(url)).json()["own"] is None
        assert (await admin.put(url, json={"max_running": 4})).json()["own"]["max_running"] == 4
        assert (await admin.delete(url)).json()["own"] is None
        page = (await admin.get("/api/admin/audit", params={"action": "admin.quota."})).json()
        assert {(e["action"], e["target"]) for e in page["items"]} >= {
            ("admin.quota.set", f"user:{user_id}"),
            ("admin.quota.drop", f"user:{user_id}"),
        }
