"""Workspace records over real HTTP: CRUD, visibility, pagination, validation and hostile input."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.support.server import Hub

pytestmark = pytest.mark.anyio


async def test_crud_roundtrip(hub: Hub) -> None:
    token = await hub.new_user("wsuser")
    async with hub.client(token) as client:
        r = await client.post("/api/workspaces", json={"name": "alpha", "cpu": 2, "memory_mb": 1024})
        assert r.status_code == 201, r.text
        ws = r.json()
        assert ws["state"] == "created" and ws["url"] == f"/w/{ws['id']}/" and ws["cpu"] == 2.0
        assert ws["id"].isalnum() and ws["id"].islower() and len(ws["id"]) == 12
        assert (await client.get(f"/api/workspaces/{ws['id']}")).json()["name"] == "alpha"
        r = await client.patch(f"/api/workspaces/{ws['id']}", json={"name": "beta", "memory_mb": 512})
        assert r.status_code == 200 and r.json()["name"] == "beta" and r.json()["memory_mb"] == 512
        assert (await client.post("/api/workspaces", json={"name": "beta"})).status_code == 409
        assert (await client.delete(f"/api/workspaces/{ws['id']}")).status_code == 204
        assert (await client.get(f"/api/workspaces/{ws['id']}")).status_code == 404


async def test_other_users_see_404(hub: Hub) -> None:
    owner = await hub.new_user("owner1")
    other = await hub.new_user("other1")
    async with hub.client(owner) as client:
        ws = (await client.post("/api/workspaces", json={"name": "mine"})).json()
    async with hub.client(other) as client:
        for method in ("GET", "PATCH", "DELETE"):
            kwargs = {"json": {"name": "x"}} if method == "PATCH" else {}
            r = await client.request(method, f"/api/workspaces/{ws['id']}", **kwargs)
            assert r.status_code == 404, (method, r.text)
        assert ws["id"] not in {w["id"] for w in (await client.get("/api/workspaces")).json()["items"]}
        assert (await client.get("/api/workspaces", params={"all": "true"})).status_code == 403
        # the same name is free for another user
        assert (await client.post("/api/workspaces", json={"name": "mine"})).status_code == 201
    async with hub.client() as admin:
        assert (await admin.get(f"/api/workspaces/{ws['id']}")).status_code == 200
        everyone = (await admin.get("/api/workspaces", params={"all": "true", "limit": 200})).json()["items"]
        assert ws["id"] in {w["id"] for w in everyone}


async def test_pagination_and_state_filter(hub: Hub) -> None:
    token = await hub.new_user("pager")
    async with hub.client(token) as client:
        for i in range(7):
            assert (await client.post("/api/workspaces", json={"name": f"p{i}"})).status_code == 201
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/workspaces", params=params)).json()
            seen += [w["name"] for w in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [f"p{i}" for i in reversed(range(7))]
        created = (await client.get("/api/workspaces", params={"state": "created"})).json()["items"]
        assert len(created) == 7
        assert (await client.get("/api/workspaces", params={"state": "running"})).json()["items"] == []
        bad = await client.get("/api/workspaces", params={"state": "exploded"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_state"
        assert (await client.get("/api/workspaces", params={"cursor": "!!!"})).status_code == 400
        assert (await client.get("/api/workspaces", params={"limit": 0})).status_code == 400


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"name": "UPPER"}, 400),
        ({"name": "-lead"}, 400),
        ({"name": "a" * 64}, 400),
        ({"name": "ok", "unknown": 1}, 400),
        ({"name": "ok", "cpu": "two"}, 400),
        ({"name": "ok", "cpu": 1000}, 422),
        ({"name": "ok", "memory_mb": 10_000_000}, 422),
        ({"name": "ok", "cpu": -1}, 400),
        ({"name": "ok", "git_url": "file:///etc"}, 403),
        ({"name": "ok", "git_url": "--upload-pack=touch /tmp/x"}, 422),
        ({"name": "ok", "git_url": "ftp://x/y"}, 422),
        ({"name": "ok", "server_id": "nosuchserver"}, 422),
        ({"name": "ok", "image": "bad image name"}, 400),
        ({}, 400),
        ([], 400),
        ("just a string", 400),
    ],
)
async def test_bad_workspace_bodies_are_4xx(hub: Hub, body: object, status: int) -> None:
    async with hub.client() as client:
        r = await client.post("/api/workspaces", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) >= {"error", "detail"}


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "x",', b"\xff\xfe\x00", b"null", b'{"name": "' + b"a" * 2_000_000 + b'"}', b""],
)
async def test_malformed_bodies_are_4xx(hub: Hub, raw: bytes) -> None:
    async with hub.client() as client:
        r = await client.post("/api/workspaces", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert "error" in r.json()


@pytest.mark.parametrize("ws_id", ["../../etc", "x" * 300, "%00", "a b", "UPPER", "'; drop table users;--"])
async def test_bad_ids_are_404(hub: Hub, ws_id: str) -> None:
    async with hub.client() as client:
        r = await client.get("/api/workspaces/" + quote(ws_id, safe=""))
    assert r.status_code == 404, r.text


async def test_credentials_in_git_url_are_not_stored(hub: Hub) -> None:
    async with hub.client() as client:
        r = await client.post(
            "/api/workspaces", json={"name": "cloned", "git_url": "https://user:s3cret@git.example/r.git"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["git_url"] == "https://git.example/r.git"
        assert "s3cret" not in (await client.get(f"/api/workspaces/{r.json()['id']}")).text
