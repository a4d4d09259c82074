"""Templates over real HTTP (SQLite and Postgres): CRUD, versions, bounds, workspaces made from them, who may
manage them; the default template of a fresh install."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from app.factory import create_app
from tests.support.server import Hub, running_hub, serve_asgi
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio

FULL = {
    "name": "python",
    "description": "Python 3 with tools",
    "image": "example.org/python-ide:3",
    "default_cpu": 1,
    "max_cpu": 2,
    "default_memory_mb": 512,
    "max_memory_mb": 1024,
    "env": {"GREETING": "hello"},
    "secrets": {"API_TOKEN": "tok-value-1"},
    "command": "code-server --bind-addr 0.0.0.0:8080 '/home/coder/project'",
    "dotfiles_url": "https://git.example.org/me/dotfiles.git",
    "idle_timeout": 600,
    "server_labels": {"gpu": "no"},
}


async def test_a_fresh_install_has_the_default_template(hub: Hub) -> None:
    token = await hub.new_user("tpl-fresh")
    async with hub.client(token) as client:
        templates = (await client.get("/api/templates")).json()
        default = next(t for t in templates if t["name"] == "default")
        assert default["image"] == hub.settings.default_image and default["version"] == 1
        assert default["max_cpu"] == hub.settings.max_cpu and default["secret_names"] == []
        assert (await client.get(f"/api/templates/{default['id']}")).json()["name"] == "default"


async def test_crud_and_versions(hub: Hub) -> None:
    async with hub.client() as admin:
        r = await admin.post("/api/admin/templates", json=FULL)
        assert r.status_code == 201, r.text
        tpl = r.json()
        assert tpl["version"] == 1 and tpl["secret_names"] == ["API_TOKEN"] and "secrets" not in tpl
        assert tpl["env"] == {"GREETING": "hello"} and tpl["idle_timeout"] == 600
        assert (await admin.post("/api/admin/templates", json=FULL)).status_code == 409

        r = await admin.patch(f"/api/admin/templates/{tpl['id']}", json={"image": "example.org/python-ide:4"})
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["secret_names"] == ["API_TOKEN"]
        r = await admin.patch("/api/admin/templates/python", json={"description": "renamed only"})
        assert r.json()["version"] == 2 and r.json()["description"] == "renamed only"
        r = await admin.patch(
            "/api/admin/templates/python",
            json={"secrets": {"DB_PASSWORD": "pw"}, "remove_secrets": ["API_TOKEN"], "dotfiles_url": ""},
        )
        assert r.json()["version"] == 3 and r.json()["secret_names"] == ["DB_PASSWORD"]
        assert r.json()["dotfiles_url"] is None

        old = (await admin.get("/api/admin/templates/python", params={"version": 1})).json()
        assert old["image"] == FULL["image"] and old["latest_version"] == 3
        versions = (await admin.get(f"/api/admin/templates/{tpl['id']}/versions")).json()
        assert [v["version"] for v in versions] == [3, 2, 1]
        assert (await admin.get("/api/admin/templates/python", params={"version": 9})).status_code == 404
        assert "python" in {t["name"] for t in (await admin.get("/api/admin/templates")).json()}

        assert (await admin.delete("/api/admin/templates/python")).status_code == 204
        assert (await admin.get("/api/admin/templates/python")).status_code == 404


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"default_cpu": 3, "max_cpu": 2}, 422, "bad_resources"),
        ({"max_cpu": 10_000}, 422, "bad_resources"),
        ({"default_memory_mb": 2048, "max_memory_mb": 1024}, 422, "bad_resources"),
        ({"env": {"CODEHUB_IDE_SECRET": "x"}}, 422, "reserved_env"),
        ({"secrets": {"HASHED_PASSWORD": "x"}}, 422, "reserved_env"),
        ({"env": {"A": "1"}, "secrets": {"A": "2"}}, 422, "env_conflict"),
        ({"env": {"1BAD": "x"}}, 400, None),
        ({"command": "sh -c 'unclosed"}, 422, "bad_command"),
        ({"dotfiles_url": "ftp://example.org/x"}, 422, "bad_git_url"),
        ({"image": "-rm -rf"}, 400, None),
        ({"name": "Upper"}, 400, None),
        ({"surprise": 1}, 400, None),
    ],
)
async def test_bad_templates_are_refused_with_nothing_written(hub: Hub, change: dict, status: int, code: str) -> None:
    body = {"name": "bad-one", "image": "example.org/ide:1", **change}
    async with hub.client() as admin:
        r = await admin.post("/api/admin/templates", json=body)
        assert r.status_code == status, r.text
        if code:
            assert r.json()["error"] == code and "{" not in r.json()["detail"]
        names = {t["name"] for t in (await admin.get("/api/admin/templates", params={"archived": True})).json()}
        assert "bad-one" not in names and body["name"] not in names


async def test_only_admins_manage_templates(hub: Hub) -> None:
    token = await hub.new_user("tpl-plain")
    async with hub.client() as admin:
        tpl = (await admin.post("/api/admin/templates", json={**FULL, "name": "guarded"})).json()
    async with hub.client(token) as user:
        attempts = [
            ("POST", "/api/admin/templates", {**FULL, "name": "mine"}),
            ("GET", "/api/admin/templates", None),
            ("GET", f"/api/admin/templates/{tpl['id']}", None),
            ("GET", f"/api/admin/templates/{tpl['id']}/versions", None),
            ("PATCH", f"/api/admin/templates/{tpl['id']}", {"image": "evil.example/ide:1"}),
            ("DELETE", f"/api/admin/templates/{tpl['id']}", None),
            ("GET", f"/api/admin/templates/{tpl['id']}/images", None),
            ("POST", f"/api/admin/templates/{tpl['id']}/pull", {}),
        ]
        for method, path, body in attempts:
            r = await user.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
        seen = (await user.get("/api/templates/guarded")).json()
        assert seen["secret_names"] == ["API_TOKEN"] and "tok-value-1" not in str(seen)
    async with hub.client("") as anonymous:
        assert (await anonymous.get("/api/templates")).status_code == 401
    async with hub.client() as admin:
        after = (await admin.get(f"/api/admin/templates/{tpl['id']}")).json()
        assert after["version"] == 1 and after["image"] == FULL["image"]


async def test_workspaces_made_from_a_template(hub: Hub) -> None:
    token = await hub.new_user("tpl-user")
    async with hub.client() as admin:
        tpl = (await admin.post("/api/admin/templates", json={**FULL, "name": "bounded"})).json()
    async with hub.client(token) as user:
        r = await user.post("/api/workspaces", json={"name": "from-tpl", "template": "bounded"})
        assert r.status_code == 201, r.text
        ws = r.json()
        assert ws["template_id"] == tpl["id"] and ws["template_version"] == 1
        assert ws["image"] == FULL["image"] and ws["cpu"] == 1 and ws["memory_mb"] == 512

        r = await user.post("/api/workspaces", json={"name": "too-big", "template": tpl["id"], "cpu": 4})
        assert r.status_code == 422 and r.json()["error"] == "outside_template_bounds"
        assert "at most 2 CPUs" in r.json()["detail"]
        r = await user.post("/api/workspaces", json={"name": "too-big", "template": "bounded", "memory_mb": 4096})
        assert r.status_code == 422 and "1024 MiB" in r.json()["detail"]
        r = await user.post("/api/workspaces", json={"name": "own-img", "template": "bounded", "image": "x/y:1"})
        assert r.status_code == 422 and r.json()["error"] == "image_set"
        r = await user.post("/api/workspaces", json={"name": "no-tpl", "template": "no-such-template"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_template"
        names = {w["name"] for w in (await user.get("/api/workspaces")).json()["items"]}
        assert names == {"from-tpl"}

        r = await user.patch(f"/api/workspaces/{ws['id']}", json={"cpu": 3})
        assert r.status_code == 422 and r.json()["error"] == "outside_template_bounds"
        r = await user.patch(f"/api/workspaces/{ws['id']}", json={"image": "x/y:1"})
        assert r.status_code == 422
        assert (await user.patch(f"/api/workspaces/{ws['id']}", json={"cpu": 2})).json()["cpu"] == 2

    async with hub.client() as admin:
        await admin.patch("/api/admin/templates/bounded", json={"max_cpu": 4})
    async with hub.client(token) as user:
        newer = (await user.post("/api/workspaces", json={"name": "newer", "template": "bounded", "cpu": 4})).json()
        assert newer["template_version"] == 2
        assert (await user.get(f"/api/workspaces/{ws['id']}")).json()["template_version"] == 1

    async with hub.client() as admin:
        assert (await admin.delete("/api/admin/templates/bounded")).status_code == 204
        assert "bounded" not in {t["name"] for t in (await admin.get("/api/admin/templates")).json()}
        archived = (await admin.get("/api/admin/templates", params={"archived": True})).json()
        assert next(t for t in archived if t["name"] == "bounded")["archived"] is True
    async with hub.client(token) as user:
        assert "bounded" not in {t["name"] for t in (await user.get("/api/templates")).json()}
        r = await user.post("/api/workspaces", json={"name": "late", "template": "bounded"})
        assert r.status_code == 422 and r.json()["error"] == "template_archived"


async def test_workspaces_without_a_template_are_unchanged(hub: Hub) -> None:
    token = await hub.new_user("tpl-none")
    async with hub.client(token) as user:
        ws = (await user.post("/api/workspaces", json={"name": "plain", "image": "any/image:1"})).json()
        assert ws["template_id"] is None and ws["template_version"] is None and ws["image"] == "any/image:1"


async def test_a_changed_key_fails_the_start_with_a_plain_reason(sqlite_url: str, tmp_path: Path) -> None:
    secret = "never-shown-9f3c1a"
    first = make_settings(tmp_path / "a", database_url=sqlite_url, secret_key="a" * 40)
    async with running_hub(first) as hub, hub.client() as admin:
        body = {"name": "keyed", "image": "example.org/ide:1", "secrets": {"TOKEN": secret}}
        assert (await admin.post("/api/admin/templates", json=body)).status_code == 201
        ws = (await admin.post("/api/workspaces", json={"name": "keyed-ws", "template": "keyed"})).json()
        token = hub.admin_token
    second = make_settings(tmp_path / "b", database_url=sqlite_url, secret_key="b" * 40)
    async with serve_asgi(create_app(second)) as url, httpx.AsyncClient(base_url=url) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.status_code == 200, r.text
        failed = r.json()
        assert failed["state"] == "failed" and "TOKEN" in failed["state_reason"]
        assert "cannot be decrypted" in failed["state_reason"] and "set it again" in failed["state_reason"]
        assert secret not in r.text


async def test_concurrent_edits_make_contiguous_versions_or_a_conflict(hub: Hub) -> None:
    async with hub.client() as admin:
        tpl = (await admin.post("/api/admin/templates", json={**FULL, "name": "contended"})).json()
        answers: list[httpx.Response] = []

        async def edit(n: int) -> None:
            answers.append(await admin.patch(f"/api/admin/templates/{tpl['id']}", json={"image": f"x.org/ide:{n}"}))

        async with anyio.create_task_group() as tasks:
            for n in range(6):
                tasks.start_soon(edit, n)
        assert {r.status_code for r in answers} <= {200, 409}, [r.text for r in answers]
        made = sorted(r.json()["version"] for r in answers if r.status_code == 200)
        versions = (await admin.get(f"/api/admin/templates/{tpl['id']}/versions")).json()
        assert [v["version"] for v in versions] == list(range(len(made) + 1, 0, -1))
        assert made == list(range(2, len(made) + 2))
        assert versions[0]["image"] in {f"x.org/ide:{n}" for n in range(6)}
