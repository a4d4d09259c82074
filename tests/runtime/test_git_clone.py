"""Cloning at create: smart HTTP served by ``git http-backend`` on loopback, file:// when allowed."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.services.workspaces.git import parse_progress, redact, split_credentials
from tests.support.databases import fresh_database
from tests.support.git_http import GitHTTPServer, make_repo, serve_git
from tests.support.lifecycle import create, event_history, types, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio
PASSWORD = "s3cret-Pa55-xyz"


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHTTPServer]:
    """Two branches of one repository, public and (under /private/) behind Basic auth."""
    root = tmp_path_factory.mktemp("repos")
    make_repo(
        root,
        "repo.git",
        branches={
            "main": {"README.md": "hello\n", "a.txt": "a\n"},
            "feature": {"feature.txt": "feature\n", "b.txt": "b\n"},
        },
    )
    with serve_git(root, user="alice", password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def data_and_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data dir and a migrated SQLite database for this module's hub."""
    data = tmp_path_factory.mktemp("data")
    with fresh_database("sqlite", data) as url:
        yield data, url


@pytest.fixture(scope="module")
async def hub(data_and_db: tuple[Path, str]) -> AsyncIterator[Hub]:
    """A local-runtime hub that allows file:// URLs (for admins)."""
    data, url = data_and_db
    settings = make_settings(
        data, database_url=url, runtime="local", local_ide_command=fake_ide_command(), allow_file_git_urls=True
    )
    async with running_hub(settings) as running:
        yield running


def workspace_dir(hub: Hub, workspace_id: str) -> Path:
    """Where the hub keeps a workspace's files."""
    return hub.settings.resolved_workspaces_dir / workspace_id


async def test_clone_branch_with_depth_then_start(hub: Hub, git_server: GitHTTPServer) -> None:
    async with hub.client() as client:
        ws = await create(client, "cloned", git_url=f"{git_server.url}/repo.git", git_ref="feature", git_depth=1)
        body = await wait_state(client, ws["id"], {"created", "failed"})
        while body["state_reason"] == "cloning":
            body = await wait_state(client, ws["id"], {"created", "failed"})
        assert body["state"] == "created" and body["state_reason"] is None
        directory = workspace_dir(hub, ws["id"])
        assert (directory / "feature.txt").read_text() == "feature\n"
        log = subprocess.run(["git", "log", "--oneline"], cwd=directory, capture_output=True, text=True).stdout
        assert len(log.splitlines()) == 1
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.cloned")
        progress = [e["data"] for e in events if e["type"] == "clone.progress"]
        assert progress[0]["phase"] == "starting" and progress[-1]["phase"] == "done"
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running"
        out = (await client.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "cat README.md"})).json()
        assert out["stdout"] == "hello\n"
        await client.delete(f"/api/workspaces/{ws['id']}", params={"purge": "true"})


async def test_private_clone_keeps_credentials_out_of_everything(
    hub: Hub, git_server: GitHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = git_server.server_address[1]
    secret_url = f"http://alice:{PASSWORD}@127.0.0.1:{port}/private/repo.git"
    async with hub.client() as client:
        r = await client.post("/api/workspaces", json={"name": "private", "git_url": secret_url})
        assert r.status_code == 201 and PASSWORD not in r.text
        ws = r.json()
        assert ws["git_url"] == f"http://127.0.0.1:{port}/private/repo.git"
        body = await wait_state(client, ws["id"], {"created", "failed"})
        while body["state_reason"] == "cloning":
            body = await wait_state(client, ws["id"], {"created", "failed"})
        assert body["state"] == "created", body["state_reason"]
        directory = workspace_dir(hub, ws["id"])
        assert (directory / "README.md").exists()
        assert PASSWORD not in (directory / ".git" / "config").read_text()
        history = await event_history(client, "admin", "workspace.cloned")
        assert PASSWORD not in str(history)
        listed = await client.get(f"/api/workspaces/{ws['id']}")
        assert PASSWORD not in listed.text
    assert PASSWORD not in caplog.text
    assert git_server.authorizations, "git sent the credentials through askpass"


async def test_bad_credentials_and_missing_repos_fail_with_a_clean_reason(hub: Hub, git_server: GitHTTPServer) -> None:
    port = git_server.server_address[1]
    async with hub.client() as client:
        ws = await create(client, "wrongpass", git_url=f"http://alice:not-{PASSWORD}@127.0.0.1:{port}/private/repo.git")
        body = await wait_state(client, ws["id"], {"failed"})
        assert body["state_reason"].startswith("git clone failed:") and "Authentication failed" in body["state_reason"]
        assert PASSWORD not in body["state_reason"] and "not-" not in body["state_reason"]
        ws = await create(client, "missing", git_url=f"{git_server.url}/nope.git")
        body = await wait_state(client, ws["id"], {"failed"})
        assert "not found" in body["state_reason"]
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.failed")
        assert types(events)[-1] == "workspace.failed"


async def test_file_urls_for_admins_when_allowed(hub: Hub, tmp_path: Path) -> None:
    bare = make_repo(tmp_path, "local.git", branches={"main": {"x.txt": "x\n"}})
    async with hub.client() as client:
        ws = await create(client, "filed", git_url=f"file://{bare}")
        body = await wait_state(client, ws["id"], {"created", "failed"})
        while body["state_reason"] == "cloning":
            body = await wait_state(client, ws["id"], {"created", "failed"})
        assert body["state"] == "created", body["state_reason"]
        assert (workspace_dir(hub, ws["id"]) / "x.txt").read_text() == "x\n"
    user = await hub.new_user("gituser")
    async with hub.client(user) as plain:
        r = await plain.post("/api/workspaces", json={"name": "nofile", "git_url": f"file://{bare}"})
        assert r.status_code == 403


def test_helpers() -> None:
    assert split_credentials("https://u:p%40ss@h:8443/r.git") == ("https://h:8443/r.git", "u", "p@ss")
    assert split_credentials("ssh://git@h/r.git") == ("ssh://git@h/r.git", None, None)
    assert redact("fatal: https://bob:pw@h/x and pw", "pw") == "fatal: https://***@h/x and ***"
    assert parse_progress("Receiving objects:  45% (450/1000), 1.2 MiB | 3 MiB/s") == {
        "phase": "Receiving objects",
        "percent": 45,
        "current": 450,
        "total": 1000,
    }
    assert parse_progress("remote: Counting objects: 100% (5/5), done.")["phase"] == "Counting objects"
    assert parse_progress("Cloning into 'x'...") is None
