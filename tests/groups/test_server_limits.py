"""Servers limited to groups (Docker runtime, SQLite and Postgres): automatic placement never puts a workspace
on a server limited to groups its owner is not in, naming such a server is a 403 with the reason, an admin
cannot move someone's workspace there, and membership changes count from the next request."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.server import Hub, running_hub
from tests.support.services import need_docker
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A Docker hub with no server of its own: each test registers the servers it needs."""
    settings = docker_settings(tmp_path_factory.mktemp("data"), db_url, docker_url="none")
    async with running_hub(settings) as running:
        yield running


async def user(hub: Hub, prefix: str) -> tuple[int, str]:
    """A new user's id and token."""
    token = await hub.new_user(f"{prefix}-{secrets.token_hex(3)}")
    async with hub.client(token) as client:
        return (await client.get("/api/auth/me")).json()["id"], token


async def group(admin: httpx.AsyncClient, prefix: str, *members: int) -> int:
    """A new local group with ``members``; its id."""
    gid: int = (await admin.post("/api/admin/groups", json={"name": f"{prefix}-{secrets.token_hex(3)}"})).json()["id"]
    for uid in members:
        assert (await admin.put(f"/api/admin/groups/{gid}/members/{uid}")).status_code == 204
    return gid


async def server(admin: httpx.AsyncClient, prefix: str, groups: list[int]) -> str:
    """A new server on the test engine limited to ``groups``; its id."""
    body = {"name": f"{prefix}-{secrets.token_hex(3)}", "docker_url": need_docker(), "allowed_groups": groups}
    r = await admin.post("/api/admin/servers", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["allowed_groups"] == groups
    return str(r.json()["id"])


async def create(client: httpx.AsyncClient, **fields: object) -> httpx.Response:
    return await client.post("/api/workspaces", json={"name": f"w-{secrets.token_hex(3)}", **fields})


async def test_placement_respects_server_groups(hub: Hub) -> None:
    member_id, member = await user(hub, "sm")
    outsider_id, outsider = await user(hub, "so")
    async with hub.client() as admin:
        gid = await group(admin, "gpu", member_id)
        other = await group(admin, "other")
        limited = await server(admin, "gpu", [gid])
        await server(admin, "theirs", [other])

        async with hub.client(outsider) as client:
            r = await create(client)
            assert r.status_code == 403 and r.json()["error"] == "no_server_for_groups", r.text
            r = await create(client, server_id=limited)
            assert r.status_code == 403 and r.json()["error"] == "server_not_allowed_for_groups", r.text
            assert "limited to groups" in r.json()["detail"]
            assert (await client.get("/api/workspaces")).json()["items"] == []

        async with hub.client(member) as client:
            for _ in range(3):
                r = await create(client)
                assert r.status_code == 201 and r.json()["server_id"] == limited, r.text

        open_server = await server(admin, "open", [])
        async with hub.client(outsider) as client:
            placed = []
            for _ in range(4):  # the limited server is the emptier one, and still never chosen
                r = await create(client)
                assert r.status_code == 201, r.text
                placed.append(r.json())
            assert {ws["server_id"] for ws in placed} == {open_server}

        r = await admin.post(f"/api/admin/workspaces/{placed[0]['id']}/place", json={"server_id": limited})
        assert r.status_code == 403 and r.json()["error"] == "server_not_allowed_for_groups", r.text
        assert (await admin.get(f"/api/workspaces/{placed[0]['id']}")).json()["server_id"] == open_server

        # joining the group counts from the next request; leaving it too
        assert (await admin.put(f"/api/admin/groups/{gid}/members/{outsider_id}")).status_code == 204
        async with hub.client(outsider) as client:
            assert (await create(client, server_id=limited)).status_code == 201
        r = await admin.post(f"/api/admin/workspaces/{placed[1]['id']}/place", json={"server_id": limited})
        assert r.status_code == 200 and r.json()["server_id"] == limited
        assert (await admin.delete(f"/api/admin/groups/{gid}/members/{outsider_id}")).status_code == 204
        async with hub.client(outsider) as client:
            assert (await create(client, server_id=limited)).status_code == 403


async def test_server_groups_are_admin_only_and_checked(hub: Hub) -> None:
    _, token = await user(hub, "sx")
    async with hub.client() as admin:
        gid = await group(admin, "ops")
        sid = await server(admin, "ops", [])
        r = await admin.post(
            "/api/admin/servers",
            json={"name": f"bad-{secrets.token_hex(3)}", "docker_url": need_docker(), "allowed_groups": [999999]},
        )
        assert r.status_code == 422 and r.json()["error"] == "unknown_group"
        assert not any(s["name"].startswith("bad-") for s in (await admin.get("/api/admin/servers")).json())
        r = await admin.put(f"/api/admin/servers/{sid}/groups", json={"allowed_groups": [999999]})
        assert r.status_code == 422
        assert (
            await admin.put("/api/admin/servers/nosuchserver/groups", json={"allowed_groups": []})
        ).status_code == 404

        async with hub.client(token) as client:
            r = await client.put(f"/api/admin/servers/{sid}/groups", json={"allowed_groups": []})
            assert r.status_code == 403
        r = await admin.put(f"/api/admin/servers/{sid}/groups", json={"allowed_groups": [gid]})
        assert r.status_code == 200 and r.json()["allowed_groups"] == [gid]
        r = await admin.delete(f"/api/admin/groups/{gid}")
        assert r.status_code == 409 and r.json()["error"] == "group_in_use" and "server" in r.json()["detail"]
        async with hub.client(token) as client:
            r = await create(client, server_id=sid)
            assert r.status_code == 403 and r.json()["error"] == "server_not_allowed_for_groups"
