"""Editing and draining servers over real HTTP (Docker runtime, SQLite and Postgres): a draining server takes
no new workspaces while the one running there keeps running and restarts in place; a server that runs
workspaces cannot be disabled; edits are validated (nothing half-written), audited, admin-only."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.lifecycle import wait_state
from tests.support.server import Hub, running_hub
from tests.support.services import need_docker
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A Docker hub with no server of its own: the test registers the servers it needs."""
    settings = docker_settings(tmp_path_factory.mktemp("data"), db_url, docker_url="none")
    async with running_hub(settings) as running:
        yield running


async def register(admin: httpx.AsyncClient, prefix: str) -> dict[str, Any]:
    """A new server on the test engine."""
    r = await admin.post(
        "/api/admin/servers", json={"name": f"{prefix}-{secrets.token_hex(3)}", "docker_url": need_docker()}
    )
    assert r.status_code == 201, r.text
    assert r.json()["draining"] is False
    return dict(r.json())


async def listed(admin: httpx.AsyncClient, server_id: str) -> dict[str, Any]:
    return dict(next(s for s in (await admin.get("/api/admin/servers")).json() if s["id"] == server_id))


async def create(client: httpx.AsyncClient, **fields: object) -> httpx.Response:
    return await client.post("/api/workspaces", json={"name": f"w-{secrets.token_hex(3)}", **fields})


async def test_drain_keeps_running_workspaces_and_places_nothing_new(hub: Hub) -> None:
    token = await hub.new_user(f"drain-{secrets.token_hex(3)}")
    async with hub.client() as admin, hub.client(token) as client:
        old = await register(admin, "old")
        new = await register(admin, "new")
        r = await admin.post("/api/workspaces", json={"name": f"w-{secrets.token_hex(3)}", "server_id": old["id"]})
        assert r.status_code == 201, r.text
        ws = r.json()
        assert (await admin.post(f"/api/workspaces/{ws['id']}/start")).status_code == 202
        await wait_state(admin, ws["id"], {"running"})

        r = await admin.patch(f"/api/admin/servers/{old['id']}", json={"draining": True})
        assert r.status_code == 200, r.text
        assert r.json()["draining"] is True and r.json()["enabled"] is True and r.json()["running"] == 1

        r = await admin.post("/api/workspaces", json={"name": f"w-{secrets.token_hex(3)}", "server_id": old["id"]})
        assert r.status_code == 422 and r.json()["error"] == "server_draining", r.text
        assert "draining" in r.json()["detail"]
        made = []
        for _ in range(3):
            r = await create(client)
            assert r.status_code == 201 and r.json()["server_id"] == new["id"], r.text
            made.append(r.json()["id"])
        r = await admin.post(f"/api/admin/workspaces/{made[0]}/place", json={"server_id": old["id"]})
        assert r.status_code == 422 and r.json()["error"] == "server_draining", r.text

        assert (await admin.get(f"/api/workspaces/{ws['id']}")).json()["state"] == "running"
        r = await admin.patch(f"/api/admin/servers/{old['id']}", json={"enabled": False})
        assert r.status_code == 409 and r.json()["error"] == "server_busy", r.text
        assert (await listed(admin, old["id"]))["enabled"] is True

        # a restart stays on the draining server (its data is there)
        assert (await admin.post(f"/api/workspaces/{ws['id']}/restart")).status_code == 202
        running = await wait_state(admin, ws["id"], {"running"})
        assert running["server_id"] == old["id"]

        assert (await admin.post(f"/api/workspaces/{ws['id']}/stop")).status_code == 200
        r = await admin.patch(f"/api/admin/servers/{old['id']}", json={"enabled": False})
        assert r.status_code == 200 and r.json()["enabled"] is False, r.text
        r = await admin.patch(f"/api/admin/servers/{old['id']}", json={"enabled": True, "draining": False})
        assert r.status_code == 200 and r.json()["draining"] is False
        r = await admin.post("/api/workspaces", json={"name": f"w-{secrets.token_hex(3)}", "server_id": old["id"]})
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])

        page = (await admin.get("/api/admin/audit", params={"action": "server.edit", "limit": 100})).json()
        details = [e["details"] for e in page["items"] if e["target"] == old["name"]]
        assert {"draining": True} in details and {"enabled": False} in details
        for ws_id in [ws["id"], *made]:
            assert (await admin.delete(f"/api/workspaces/{ws_id}")).status_code in (202, 204)


async def test_edit_validates_and_is_admin_only(hub: Hub) -> None:
    token = await hub.new_user(f"sedit-{secrets.token_hex(3)}")
    async with hub.client() as admin:
        one = await register(admin, "one")
        two = await register(admin, "two")
        url = f"/api/admin/servers/{one['id']}"
        r = await admin.patch(
            url,
            json={
                "name": f"renamed-{secrets.token_hex(3)}",
                "labels": {"zone": "a"},
                "public_host": "127.0.0.1",
                "max_workspaces": 7,
            },
        )
        assert r.status_code == 200, r.text
        edited = r.json()
        assert edited["labels"] == {"zone": "a"} and edited["public_host"] == "127.0.0.1"
        assert edited["max_workspaces"] == 7 and edited["name"].startswith("renamed-")
        assert await listed(admin, one["id"]) == edited
        assert (await admin.patch(url, json={"public_host": ""})).json()["public_host"] is None

        r = await admin.patch(url, json={"name": two["name"], "labels": {}})
        assert r.status_code == 409 and r.json()["error"] == "name_taken", r.text
        bad_bodies: list[Any] = [
            {"name": "bad name"},
            {"name": ""},
            {"max_workspaces": 0},
            {"public_host": "a b"},
            {"labels": {"": "x"}},
            {"labels": {"k": "v" * 300}},
            {"draining": "yes"},
            {"docker_url": "tcp://evil:2375"},
            {"is_default": True},
            [1],
        ]
        for bad in bad_bodies:
            r = await admin.patch(url, json=bad)
            assert r.status_code in (400, 422) and "error" in r.json(), (bad, r.text)
        after = await listed(admin, one["id"])
        assert after["labels"] == {"zone": "a"} and after["name"] == edited["name"]
        assert after["docker_url"] == one["docker_url"]
        assert (await admin.patch("/api/admin/servers/nosuchsrv", json={"draining": True})).status_code == 404

    async with hub.client(token) as client:
        r = await client.patch(f"/api/admin/servers/{one['id']}", json={"draining": True, "name": "mine"})
        assert r.status_code == 403
    async with hub.client("") as anon:
        assert (await anon.patch(f"/api/admin/servers/{one['id']}", json={"enabled": False})).status_code == 401
    async with hub.client() as admin:
        unchanged = await listed(admin, one["id"])
        assert unchanged["draining"] is False and unchanged["enabled"] is True and unchanged["name"] != "mine"
