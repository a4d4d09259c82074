"""Templates limited to groups, attacked by a user outside them, on SQLite and Postgres: not listed, not
readable, no workspace made from it (403 with the reason), unknown groups refused, a group in use not
deletable; membership changes count from the very next request; the limit never makes a new version."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from app import db
from app.services.auth.identities import IdentityService
from app.services.auth.oidc import OidcIdentity
from app.services.auth.users import AuthService
from tests.support.server import Hub

pytestmark = pytest.mark.anyio


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


async def sees(client: httpx.AsyncClient, name: str) -> bool:
    """True when ``name`` is among the caller's templates and readable by them."""
    listed = name in {t["name"] for t in (await client.get("/api/templates")).json()}
    readable = (await client.get(f"/api/templates/{name}")).status_code == 200
    assert listed == readable
    return listed


async def test_outsiders_neither_see_nor_use_a_limited_template(hub: Hub) -> None:
    member_id, member = await user(hub, "tm")
    outsider_id, outsider = await user(hub, "to")
    name = f"gpu-{secrets.token_hex(3)}"
    async with hub.client() as admin:
        gid = await group(admin, "gpu", member_id)
        r = await admin.post(
            "/api/admin/templates", json={"name": name, "image": hub.settings.default_image, "allowed_groups": [gid]}
        )
        assert r.status_code == 201, r.text
        assert r.json()["allowed_groups"] == [gid]
        tpl_id = r.json()["id"]

    async with hub.client(member) as client:
        assert await sees(client, name)
        r = await client.post("/api/workspaces", json={"name": "mine", "template": name})
        assert r.status_code == 201, r.text

    async with hub.client(outsider) as client:
        assert not await sees(client, name)
        assert (await client.get(f"/api/templates/{tpl_id}")).json()["error"] == "template_not_found"
        for ref in (name, tpl_id):
            r = await client.post("/api/workspaces", json={"name": "stolen", "template": ref})
            assert r.status_code == 403, r.text
            assert r.json()["error"] == "template_not_allowed" and "limited to groups" in r.json()["detail"]
        page = (await client.get("/api/workspaces")).json()
        assert page["items"] == []
        # a non-admin cannot widen the limit or join the group
        r = await client.patch(f"/api/admin/templates/{name}", json={"allowed_groups": []})
        assert r.status_code == 403
        assert (await client.put(f"/api/admin/groups/{gid}/members/{outsider_id}")).status_code == 403
        assert not await sees(client, name)


async def test_membership_changes_count_from_the_next_request(hub: Hub) -> None:
    uid, token = await user(hub, "tn")
    name = f"team-{secrets.token_hex(3)}"
    async with hub.client() as admin, hub.client(token) as client:
        gid = await group(admin, "team")
        r = await admin.post(
            "/api/admin/templates", json={"name": name, "image": hub.settings.default_image, "allowed_groups": [gid]}
        )
        assert r.status_code == 201
        assert not await sees(client, name)

        assert (await admin.put(f"/api/admin/groups/{gid}/members/{uid}")).status_code == 204
        assert await sees(client, name)
        assert (await client.post("/api/workspaces", json={"name": "now-ok", "template": name})).status_code == 201

        assert (await admin.delete(f"/api/admin/groups/{gid}/members/{uid}")).status_code == 204
        assert not await sees(client, name)
        r = await client.post("/api/workspaces", json={"name": "not-any-more", "template": name})
        assert r.status_code == 403 and r.json()["error"] == "template_not_allowed"

        # lifting the limit opens it to everyone, and is not a new version of what workspaces run
        r = await admin.patch(f"/api/admin/templates/{name}", json={"allowed_groups": []})
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["allowed_groups"] == []
        assert await sees(client, name)


async def test_limits_name_real_groups_and_keep_them(hub: Hub) -> None:
    name = f"lim-{secrets.token_hex(3)}"
    async with hub.client() as admin:
        gid = await group(admin, "keep")
        image = hub.settings.default_image
        for bad in ([999999], [gid, 999999]):
            r = await admin.post("/api/admin/templates", json={"name": name, "image": image, "allowed_groups": bad})
            assert r.status_code == 422 and r.json()["error"] == "unknown_group", r.text
        for bad in ([0], ["x"], [-1]):
            r = await admin.post("/api/admin/templates", json={"name": name, "image": image, "allowed_groups": bad})
            assert r.status_code == 400, r.text
        assert (await admin.get(f"/api/admin/templates/{name}")).status_code == 404  # nothing half-written

        r = await admin.post("/api/admin/templates", json={"name": name, "image": image, "allowed_groups": [gid, gid]})
        assert r.status_code == 201 and r.json()["allowed_groups"] == [gid]
        r = await admin.patch(f"/api/admin/templates/{name}", json={"allowed_groups": [999999]})
        assert r.status_code == 422 and r.json()["error"] == "unknown_group"
        assert (await admin.get(f"/api/admin/templates/{name}")).json()["allowed_groups"] == [gid]

        r = await admin.delete(f"/api/admin/groups/{gid}")
        assert r.status_code == 409 and r.json()["error"] == "group_in_use" and name in r.json()["detail"]
        assert (await admin.patch(f"/api/admin/templates/{name}", json={"allowed_groups": []})).status_code == 200
        assert (await admin.delete(f"/api/admin/groups/{gid}")).status_code == 204


@pytest.fixture
async def sign_in(hub: Hub) -> AsyncIterator[tuple[IdentityService, AuthService]]:
    """The hub's own sign-in sync and token issuing, on the hub's database."""
    engine = db.create_engine(hub.settings)
    sessionmaker = db.create_sessionmaker(engine)
    auth = AuthService(sessionmaker, hub.settings)
    try:
        yield IdentityService(sessionmaker, hub.settings, auth), auth
    finally:
        await engine.dispose()


async def test_groups_synced_at_sign_in_count_from_the_next_request(
    hub: Hub, sign_in: tuple[IdentityService, AuthService]
) -> None:
    identities, auth = sign_in
    claim = f"idp-ml-{secrets.token_hex(3)}"
    subject = f"sub-{secrets.token_hex(4)}"

    def person(*groups: str) -> OidcIdentity:
        return OidcIdentity("https://idp.example.test", subject, "frank", "frank@example.test", "Frank", groups)

    frank = await identities.sign_in(person(claim))
    _, token = await auth.issue_token(frank.id, name="test")
    name = f"ml-{secrets.token_hex(3)}"
    async with hub.client() as admin, hub.client(token) as client:
        gid = next(g["id"] for g in (await admin.get("/api/admin/groups")).json() if g["name"] == claim)
        r = await admin.post(
            "/api/admin/templates", json={"name": name, "image": hub.settings.default_image, "allowed_groups": [gid]}
        )
        assert r.status_code == 201
        assert await sees(client, name)

        await identities.sign_in(person())  # the provider dropped the group
        assert not await sees(client, name)
        r = await client.post("/api/workspaces", json={"name": "after-sync", "template": name})
        assert r.status_code == 403 and r.json()["error"] == "template_not_allowed"

        await identities.sign_in(person(claim))
        assert await sees(client, name)
