"""Groups over real HTTP on SQLite and Postgres: admin CRUD with member counts, members and a user's groups,
groups synced from the identity provider refused for hand edits (409 with the reason), and non-admins
refused everywhere under /api/admin/groups."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from app import db
from app.services.auth.identities import IdentityService
from app.services.auth.oidc import OidcIdentity
from app.services.auth.users import AuthService
from app.services.quotas.service import GROUP, Limits, QuotaService
from tests.support.server import Hub

pytestmark = pytest.mark.anyio
ISSUER = "https://idp.example.test"


async def user(hub: Hub, prefix: str) -> tuple[int, str]:
    """A new user's id and token."""
    token = await hub.new_user(f"{prefix}-{secrets.token_hex(3)}")
    async with hub.client(token) as client:
        return (await client.get("/api/auth/me")).json()["id"], token


@pytest.fixture
async def identities(hub: Hub) -> AsyncIterator[IdentityService]:
    """The hub's own sign-in sync, on the hub's database (as a sign-in through the provider runs it)."""
    engine = db.create_engine(hub.settings)
    sessionmaker = db.create_sessionmaker(engine)
    try:
        yield IdentityService(sessionmaker, hub.settings, AuthService(sessionmaker, hub.settings))
    finally:
        await engine.dispose()


@pytest.fixture
async def quotas(hub: Hub) -> AsyncIterator[QuotaService]:
    """The quota service on the hub's database."""
    engine = db.create_engine(hub.settings)
    try:
        yield QuotaService(db.create_sessionmaker(engine), hub.settings)
    finally:
        await engine.dispose()


async def test_local_group_crud_members_and_counts(hub: Hub, quotas: QuotaService) -> None:
    alice_id, _ = await user(hub, "ga")
    bob_id, _ = await user(hub, "gb")
    name = f"team-{secrets.token_hex(3)}"
    async with hub.client() as admin:
        r = await admin.post("/api/admin/groups", json={"name": name})
        assert r.status_code == 201, r.text
        group = r.json()
        assert group["source"] == "local" and not group["read_only"] and group["member_count"] == 0
        gid = group["id"]
        r = await admin.post("/api/admin/groups", json={"name": name})
        assert r.status_code == 409 and r.json()["error"] == "group_name_taken"
        for bad in ({"name": ""}, {"name": "-x"}, {"name": "a" * 129}, {"name": "x", "source": "oidc"}, {}):
            r = await admin.post("/api/admin/groups", json=bad)
            assert r.status_code == 400, (bad, r.text)

        for uid in (alice_id, bob_id, alice_id):  # adding twice changes nothing
            assert (await admin.put(f"/api/admin/groups/{gid}/members/{uid}")).status_code == 204
        assert (await admin.put(f"/api/admin/groups/{gid}/members/999999")).json()["error"] == "user_not_found"
        assert (await admin.put(f"/api/admin/groups/999999/members/{alice_id}")).status_code == 404
        members = (await admin.get(f"/api/admin/groups/{gid}/members")).json()
        assert sorted(m["id"] for m in members) == sorted([alice_id, bob_id])
        listed = {g["id"]: g for g in (await admin.get("/api/admin/groups")).json()}
        assert listed[gid]["member_count"] == 2
        assert [g["id"] for g in (await admin.get(f"/api/admin/groups/users/{alice_id}")).json()] == [gid]
        assert (await admin.get("/api/admin/groups/users/999999")).status_code == 404

        r = await admin.patch(f"/api/admin/groups/{gid}", json={"name": f"{name}-renamed"})
        assert r.status_code == 200 and r.json()["name"] == f"{name}-renamed" and r.json()["member_count"] == 2
        assert (await admin.delete(f"/api/admin/groups/{gid}/members/{bob_id}")).status_code == 204
        assert (await admin.get(f"/api/admin/groups/{gid}")).json()["member_count"] == 1

        await quotas.set_quota(GROUP, str(gid), Limits(max_running=9))
        assert (await admin.delete(f"/api/admin/groups/{gid}")).status_code == 204
        assert (await admin.get(f"/api/admin/groups/{gid}")).status_code == 404
        assert not await quotas.clear_quota(GROUP, str(gid))  # its quota went with it
        assert (await admin.get(f"/api/admin/groups/users/{alice_id}")).json() == []
        actions = [e["action"] for e in (await admin.get("/api/admin/audit", params={"limit": 100})).json()["items"]]
        assert {"group.create", "group.member.add", "group.rename", "group.delete"} <= set(actions)


async def test_groups_from_the_provider_are_read_only(hub: Hub, identities: IdentityService) -> None:
    claim = f"idp-devs-{secrets.token_hex(3)}"
    person = await identities.sign_in(
        OidcIdentity(ISSUER, f"sub-{secrets.token_hex(4)}", "carol", "carol@example.test", "Carol", (claim,))
    )
    other_id, _ = await user(hub, "go")
    async with hub.client() as admin:
        synced = next(g for g in (await admin.get("/api/admin/groups")).json() if g["name"] == claim)
        assert synced["source"] == "oidc" and synced["read_only"] and synced["member_count"] == 1
        gid = synced["id"]
        attempts = [
            admin.patch(f"/api/admin/groups/{gid}", json={"name": "mine-now"}),
            admin.delete(f"/api/admin/groups/{gid}"),
            admin.put(f"/api/admin/groups/{gid}/members/{other_id}"),
            admin.delete(f"/api/admin/groups/{gid}/members/{person.id}"),
        ]
        for attempt in attempts:
            r = await attempt
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "group_read_only" and "identity provider" in r.json()["detail"]
        members = (await admin.get(f"/api/admin/groups/{gid}/members")).json()
        assert [m["id"] for m in members] == [person.id]
        assert (await admin.get(f"/api/admin/groups/{gid}")).json()["name"] == claim

        # a local group with the same name is another group, and editable
        r = await admin.post("/api/admin/groups", json={"name": claim})
        assert r.status_code == 201 and r.json()["id"] != gid and r.json()["source"] == "local"


async def test_non_admins_are_refused_everywhere(hub: Hub) -> None:
    uid, token = await user(hub, "gx")
    async with hub.client() as admin:
        gid = (await admin.post("/api/admin/groups", json={"name": f"closed-{secrets.token_hex(3)}"})).json()["id"]
    async with hub.client(token) as client:
        attempts = [
            client.get("/api/admin/groups"),
            client.post("/api/admin/groups", json={"name": "mine"}),
            client.get(f"/api/admin/groups/{gid}"),
            client.patch(f"/api/admin/groups/{gid}", json={"name": "mine"}),
            client.delete(f"/api/admin/groups/{gid}"),
            client.get(f"/api/admin/groups/{gid}/members"),
            client.put(f"/api/admin/groups/{gid}/members/{uid}"),
            client.delete(f"/api/admin/groups/{gid}/members/{uid}"),
            client.get(f"/api/admin/groups/users/{uid}"),
        ]
        for attempt in attempts:
            r = await attempt
            assert r.status_code == 403 and r.json()["error"] == "admin_required", r.text
    async with hub.client() as admin:
        huge = 2**70
        for r in (
            await admin.get(f"/api/admin/groups/{huge}"),
            await admin.put(f"/api/admin/groups/{gid}/members/{huge}"),
            await admin.get(f"/api/admin/groups/users/{huge}"),
            await admin.post("/api/admin/templates", json={"name": "huge", "image": "x", "allowed_groups": [huge]}),
        ):
            assert r.status_code == 400, r.text
        assert (await admin.get("/api/admin/groups/0")).status_code == 400
    async with hub.client("") as anonymous:
        assert (await anonymous.get("/api/admin/groups")).status_code == 401
    async with hub.client() as admin:
        assert (await admin.get(f"/api/admin/groups/{gid}/members")).json() == []
        assert (await admin.get(f"/api/admin/groups/{gid}")).json()["name"].startswith("closed-")
