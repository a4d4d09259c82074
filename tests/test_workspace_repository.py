"""Changing a workspace's image and repository through ``PATCH /api/workspaces/{id}`` over real HTTP, with
the local runtime and real git clones: a workspace whose clone failed can be pointed at a good repository and
started; nothing changes while it runs or once its files hold a clone; hostile input changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.git_http import make_repo
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def good_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small local repository (``file://``, allowed for admins on this hub)."""
    return make_repo(
        tmp_path_factory.mktemp("good-repo"), "good.git", branches={"main": {"README": "hello\n"}}
    ).as_uri()


@pytest.fixture(scope="module")
async def local_hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub running workspaces as local processes (the fake IDE), file:// clones allowed for admins."""
    settings = make_settings(
        tmp_path_factory.mktemp("repo-data"),
        database_url=db_url,
        local_ide_command=fake_ide_command(),
        allow_file_git_urls=True,
        start_timeout=30.0,
    )
    async with running_hub(settings) as hub:
        yield hub


async def settled(client: httpx.AsyncClient, ws_id: str) -> dict[str, Any]:
    """The workspace once no clone or start is under way."""
    for _ in range(200):
        ws: dict[str, Any] = (await client.get(f"/api/workspaces/{ws_id}")).json()
        if ws["state"] not in ("starting", "stopping") and ws["state_reason"] != "cloning":
            return ws
        await anyio.sleep(0.05)
    raise AssertionError(f"{ws_id} did not settle: {ws}")


async def test_failed_clone_is_fixed_by_a_new_url_then_starts(local_hub: Hub, good_repo: str, tmp_path: Path) -> None:
    """Bad URL → failed; PATCH a good one → cloned at once, ``created`` → starts; while running and once
    cloned the repository is fixed (409), but the image may still change."""
    async with local_hub.client() as client:
        r = await client.post("/api/workspaces", json={"name": "fixme", "git_url": (tmp_path / "nowhere").as_uri()})
        assert r.status_code == 201, r.text
        ws_id = r.json()["id"]
        ws = await settled(client, ws_id)
        assert ws["state"] == "failed" and "clone" in ws["state_reason"]

        r = await client.patch(f"/api/workspaces/{ws_id}", json={"git_url": good_repo, "git_ref": "main"})
        assert r.status_code == 200, r.text
        assert r.json()["git_url"] == good_repo and r.json()["git_ref"] == "main"
        ws = await settled(client, ws_id)
        assert ws["state"] == "created" and ws["state_reason"] is None
        files = local_hub.settings.resolved_workspaces_dir / ws_id
        assert (files / "README").read_text() == "hello\n"

        r = await client.post(f"/api/workspaces/{ws_id}/start", params={"wait": "true"})
        assert r.status_code in (200, 202), r.text
        assert (await settled(client, ws_id))["state"] == "running"
        r = await client.patch(f"/api/workspaces/{ws_id}", json={"git_url": good_repo})
        assert r.status_code == 409 and r.json()["error"] == "workspace_busy", r.text
        assert (await client.post(f"/api/workspaces/{ws_id}/stop")).status_code == 200
        assert (await settled(client, ws_id))["state"] == "stopped"

        r = await client.patch(f"/api/workspaces/{ws_id}", json={"git_url": good_repo})
        assert r.status_code == 409 and r.json()["error"] == "already_cloned", r.text
        assert "git remote set-url" in r.json()["detail"]
        r = await client.patch(f"/api/workspaces/{ws_id}", json={"image": "example.org/team/ide:2"})
        assert r.status_code == 200 and r.json()["image"] == "example.org/team/ide:2"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"git_url": "--upload-pack=touch /tmp/x"}, 422, "bad_git_url"),
        ({"git_url": "https://"}, 422, "bad_git_url"),
        ({"git_url": "https://example.com/r.git\nx"}, 422, "bad_git_url"),
        ({"git_url": "ftp://example.com/r.git"}, 422, "bad_git_url"),
        ({"git_url": ""}, 400, None),
        ({"git_url": "https://example.com/" + "a" * 1100}, 400, None),
        ({"git_ref": "main;rm -rf /"}, 400, None),
        ({"git_ref": "-x"}, 409, "no_repository"),
        ({"git_url": 5}, 400, None),
    ],
)
async def test_hostile_repository_changes_write_nothing(
    local_hub: Hub, body: dict[str, Any], status: int, code: str | None
) -> None:
    """Each bad change is a 4xx with a code, and the rename sent with it does not happen either."""
    token = await local_hub.new_user(f"hostile{abs(hash(str(body))) % 10**8}")
    async with local_hub.client(token) as client:
        ws_id = (await client.post("/api/workspaces", json={"name": "target"})).json()["id"]
        r = await client.patch(f"/api/workspaces/{ws_id}", json={"name": "renamed", **body})
        assert r.status_code == status, r.text
        if code:
            assert r.json()["error"] == code
        ws = (await client.get(f"/api/workspaces/{ws_id}")).json()
        assert ws["name"] == "target" and ws["git_url"] is None and ws["state"] == "created"


async def test_file_urls_stay_admin_only_and_credentials_are_not_stored(local_hub: Hub, good_repo: str) -> None:
    """A user may not point a workspace at a hub-local path; a URL's password is used to clone, never kept."""
    token = await local_hub.new_user("plainuser")
    async with local_hub.client(token) as client:
        ws_id = (await client.post("/api/workspaces", json={"name": "creds"})).json()["id"]
        r = await client.patch(f"/api/workspaces/{ws_id}", json={"git_url": good_repo})
        assert r.status_code == 403 and r.json()["error"] == "git_url_forbidden"
        secret_url = "https://someone:s3cret-pass@127.0.0.1:9/repo.git"
        r = await client.patch(f"/api/workspaces/{ws_id}", json={"git_url": secret_url})
        assert r.status_code == 200, r.text
        assert "s3cret" not in r.text
        ws = await settled(client, ws_id)
        assert ws["state"] == "failed" and "s3cret" not in str(ws)
        assert ws["git_url"] == "https://127.0.0.1:9/repo.git"
    other = await local_hub.new_user("stranger")
    async with local_hub.client(other) as client:
        r = await client.patch(f"/api/workspaces/{ws_id}", json={"git_url": "https://example.com/r.git"})
        assert r.status_code == 404
