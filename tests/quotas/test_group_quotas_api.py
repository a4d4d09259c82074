"""Group quotas over real HTTP on SQLite and Postgres (local runtime, fake IDE): set, read and drop a group's
quota; its members get the most generous of their groups' quotas; admins only, audited, 404 for unknown
groups, bad bodies refused with nothing written."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from tests.support.lifecycle import create
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub whose default lets a user own 1 workspace (local processes, fake IDE)."""
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=db_url,
        runtime="local",
        local_ide_command=fake_ide_command(),
        quota_workspaces=1,
    )
    async with running_hub(settings) as running:
        yield running


async def user(hub: Hub, prefix: str) -> tuple[int, str]:
    """A new user's id and token."""
    token = await hub.new_user(f"{prefix}-{secrets.token_hex(3)}")
    async with hub.client(token) as client:
        return (await client.get("/api/auth/me")).json()["id"], token


async def group(hub: Hub, prefix: str, *members: int) -> int:
    """A new local group with ``members``; its id."""
    async with hub.client() as admin:
        r = await admin.post("/api/admin/groups", json={"name": f"{prefix}-{secrets.token_hex(3)}"})
        assert r.status_code == 201, r.text
        gid: int = r.json()["id"]
        for member in members:
            assert (await admin.put(f"/api/admin/groups/{gid}/members/{member}")).status_code == 204
        return gid


async def test_the_most_generous_group_quota_applies_to_members(hub: Hub) -> None:
    user_id, token = await user(hub, "gq")
    small = await group(hub, "gq-small", user_id)
    large = await group(hub, "gq-large", user_id)
    async with hub.client() as admin:
        assert (await admin.get(f"/api/admin/groups/{small}/quota")).json()["quota"] is None
        r = await admin.put(f"/api/admin/groups/{small}/quota", json={"max_workspaces": 2, "max_cpu": 4})
        assert r.status_code == 200, r.text
        assert r.json()["group_id"] == small and r.json()["quota"]["max_workspaces"] == 2
        r = await admin.put(f"/api/admin/groups/{large}/quota", json={"max_workspaces": 3, "max_cpu": 2})
        assert r.status_code == 200, r.text
        assert (await admin.get(f"/api/admin/groups/{large}/quota")).json()["quota"]["max_cpu"] == 2

    async with hub.client(token) as client:
        mine = (await client.get("/api/auth/quota")).json()
        assert mine["source"] == "group"
        assert mine["limits"]["max_workspaces"] == 3 and mine["limits"]["max_cpu"] == 4
        for i in range(3):
            await create(client, f"g{i}")
        r = await client.post("/api/workspaces", json={"name": "g3"})
        assert r.status_code == 403 and r.json()["quota"] == "workspaces"

    async with hub.client() as admin:
        assert (await admin.delete(f"/api/admin/groups/{large}/quota")).json()["quota"] is None
        assert (await admin.delete(f"/api/admin/groups/{large}/quota")).status_code == 200
        assert (await admin.get(f"/api/admin/users/{user_id}/quota")).json()["limits"]["max_workspaces"] == 2
        await admin.delete(f"/api/admin/groups/{small}/quota")
        view = (await admin.get(f"/api/admin/users/{user_id}/quota")).json()
        assert view["source"] == "default" and view["limits"]["max_workspaces"] == 1
        page = (await admin.get("/api/admin/audit", params={"action": "admin.quota.", "limit": 100})).json()
        assert {(e["action"], e["target"]) for e in page["items"]} >= {
            ("admin.quota.set", f"group:{small}"),
            ("admin.quota.set", f"group:{large}"),
            ("admin.quota.drop", f"group:{large}"),
        }


async def test_only_admins_manage_group_quotas(hub: Hub) -> None:
    user_id, token = await user(hub, "gqa")
    own = await group(hub, "gqa-own", user_id)
    url = f"/api/admin/groups/{own}/quota"
    async with hub.client(token) as client:  # a member lifting their own group's limits
        assert (await client.put(url, json={"max_workspaces": 1000})).status_code == 403
        assert (await client.delete(url)).status_code == 403
        assert (await client.get(url)).status_code == 403
        assert (await client.get("/api/auth/quota")).json()["source"] == "default"
    async with hub.client("") as anon:
        assert (await anon.put(url, json={})).status_code == 401
        assert (await anon.get(url)).status_code == 401
    async with hub.client() as admin:
        assert (await admin.get(url)).json()["quota"] is None
        for missing in (999999, 2**31 - 1):
            assert (await admin.put(f"/api/admin/groups/{missing}/quota", json={"max_running": 1})).status_code == 404
            assert (await admin.get(f"/api/admin/groups/{missing}/quota")).status_code == 404
            assert (await admin.delete(f"/api/admin/groups/{missing}/quota")).status_code == 404
        for bad_id in ("0", "-1", "abc", str(2**40)):
            r = await admin.put(f"/api/admin/groups/{bad_id}/quota", json={"max_running": 1})
            assert r.status_code in (400, 404, 405), (bad_id, r.text)
        bad_bodies = ({"max_running": -1}, {"max_cpu": "lots"}, {"max_running": 1, "group_id": 7}, [1, 2])
        for bad in bad_bodies:
            r = await admin.put(url, json=bad)
            assert r.status_code in (400, 422) and "error" in r.json(), (bad, r.text)
        assert (await admin.get(url)).json()["quota"] is None
        page = (await admin.get("/api/admin/audit", params={"action": "admin.quota.", "limit": 100})).json()
        assert not [e for e in page["items"] if e["target"] == f"group:{own}"]
        # deleting the group drops its quota with it
        assert (await admin.put(url, json={"max_workspaces": 5})).status_code == 200
        assert (await admin.delete(f"/api/admin/groups/{own}")).status_code == 204
        assert (await admin.get(url)).status_code == 404
