"""A workspace's files live in its volume on its own engine: the local engine, and a second engine that cannot
see the hub's disk (another "host"). Files, patches and clone agree with what the container sees; the home
survives restarts; a stopped workspace can be edited; a purge leaves no volume behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.git_http import make_repo
from tests.support.lifecycle import create, wait_state
from tests.support.runtime import remove_hub_containers
from tests.support.server import Hub, running_hub
from tests.support.services import DOCKER_URL, need_second_engine
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio
ENGINES = ["local", "second"]


@pytest.fixture(scope="module")
def data_and_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data dir and a migrated SQLite database for this module's hub."""
    data = tmp_path_factory.mktemp("data")
    with fresh_database("sqlite", data) as url:
        yield data, url


@pytest.fixture(scope="module")
async def hub(data_and_db: tuple[Path, str]) -> AsyncIterator[Hub]:
    """A Docker hub (file:// clones allowed); everything of its hub id is removed on both engines at the end."""
    data, url = data_and_db
    settings = docker_settings(data, url, allow_file_git_urls=True)
    try:
        async with running_hub(settings) as running:
            yield running
    finally:
        remove_hub_containers(settings.hub_id)
        remove_hub_containers(settings.hub_id, docker_host=need_second_engine_quietly())


def need_second_engine_quietly() -> str | None:
    """The second engine's URL when it runs (for cleanup), else None."""
    try:
        return need_second_engine()
    except BaseException:
        return None


@pytest.fixture(params=ENGINES)
async def server(request: pytest.FixtureRequest, hub: Hub) -> str:
    """The id of the server a test's workspace goes to: the local engine, or the second one."""
    url = DOCKER_URL if request.param == "local" else need_second_engine()
    async with hub.client() as client:
        servers = (await client.get("/api/admin/servers")).json()
        found = next((s for s in servers if s["docker_url"] == url), None)
        if found is None:
            r = await client.post("/api/admin/servers", json={"name": f"engine-{request.param}", "docker_url": url})
            assert r.status_code == 201, r.text
            found = r.json()
    return str(found["id"])


async def server_url(client: httpx.AsyncClient, server_id: str) -> str:
    servers = (await client.get("/api/admin/servers")).json()
    return str(next(s for s in servers if s["id"] == server_id)["docker_url"])


async def sh(client: httpx.AsyncClient, workspace_id: str, command: str) -> str:
    """Run ``command`` in the running workspace; its stdout."""
    r = await client.post(f"/api/workspaces/{workspace_id}/execute", json={"command": command})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return str(r.json()["stdout"])


async def start(client: httpx.AsyncClient, workspace_id: str) -> None:
    r = await client.post(f"/api/workspaces/{workspace_id}/start", params={"wait": "true"})
    assert r.status_code == 200 and r.json()["state"] == "running", r.text


def volumes(url: str, workspace_id: str) -> list[dict[str, str]]:
    """The engine's volumes labelled with ``workspace_id``."""
    out = subprocess.run(
        [
            "docker",
            "-H",
            url,
            "volume",
            "ls",
            "--filter",
            f"label=codehub.workspace={workspace_id}",
            "--format",
            "{{json .}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line]


async def test_files_before_start_while_running_and_while_stopped(hub: Hub, server: str) -> None:
    async with hub.client() as client:
        ws = await create(client, "vol", server_id=server)
        wid, url = ws["id"], await server_url(client, server)
        # written before the first start: the volume is made by the write, then mounted by the start
        r = await client.put(f"/api/workspaces/{wid}/files/content", params={"path": "src/a.txt"}, content=b"one\n")
        assert r.status_code == 201, r.text
        [volume] = volumes(url, wid)
        assert volume["Name"] == f"codehub-home-{wid}" and f"codehub.hub={hub.settings.hub_id}" in volume["Labels"]
        await start(client, wid)
        assert await sh(client, wid, "cat src/a.txt; pwd") == "one\n/home/coder/project\n"

        # the IDE's writes are what the files API reads; the API's writes are what the IDE sees
        await sh(client, wid, "printf 'from ide\\n' > ide.txt; mkdir -p deep/er; echo x > deep/er/f")
        read = await client.get(f"/api/workspaces/{wid}/files/content", params={"path": "ide.txt"})
        assert read.json()["content"] == "from ide\n" and read.headers["etag"] == f'"{read.json()["sha256"]}"'
        tree = (await client.get(f"/api/workspaces/{wid}/files/tree", params={"depth": 3})).json()
        assert {"deep", "deep/er", "deep/er/f", "ide.txt", "src", "src/a.txt"} == {e["path"] for e in tree["entries"]}
        stale = await client.put(
            f"/api/workspaces/{wid}/files/content",
            params={"path": "ide.txt"},
            content=b"lost\n",
            headers={"If-Match": '"' + "0" * 64 + '"'},
        )
        assert stale.status_code == 412
        diff = "--- a/ide.txt\n+++ b/ide.txt\n@@ -1 +1 @@\n-from ide\n+patched\n"
        r = await client.post("/api/patch/apply", json={"workspace_id": wid, "diff": diff})
        assert r.status_code == 200, r.text
        assert await sh(client, wid, "cat ide.txt; stat -c %u ide.txt src/a.txt") == "patched\n1000\n1000\n"
        bad = "--- a/ide.txt\n+++ b/ide.txt\n@@ -1 +1 @@\n-patched\n+x\n"
        bad += "--- a/src/a.txt\n+++ b/src/a.txt\n@@ -1 +1 @@\n-nope\n+y\n"
        assert (await client.post("/api/patch/apply", json={"workspace_id": wid, "diff": bad})).status_code == 409
        assert await sh(client, wid, "cat ide.txt src/a.txt") == "patched\none\n"  # all or nothing

        # the home (not only the project) survives a restart, which recreates the container
        await sh(client, wid, "echo kept > ~/.settings-file")
        r = await client.post(f"/api/workspaces/{wid}/restart", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
        assert await sh(client, wid, "cat ~/.settings-file") == "kept\n"

        # a stopped workspace is edited without starting its IDE
        assert (await client.post(f"/api/workspaces/{wid}/stop")).json()["state"] == "stopped"
        r = await client.put(f"/api/workspaces/{wid}/files/content", params={"path": "src/a.txt"}, content=b"two\n")
        assert r.status_code == 200, r.text
        r = await client.post(f"/api/workspaces/{wid}/files/move", json={"from": "deep", "to": "moved"})
        assert r.status_code == 200, r.text
        assert (await client.get(f"/api/workspaces/{wid}/status")).json()["state"] == "stopped"
        await start(client, wid)
        assert await sh(client, wid, "cat src/a.txt moved/er/f ~/.settings-file") == "two\nx\nkept\n"

        # a purge leaves no volume (and no helper) behind
        assert (await client.delete(f"/api/workspaces/{wid}", params={"purge": "true"})).status_code in (200, 204)
        assert volumes(url, wid) == []
        left = subprocess.run(
            ["docker", "-H", url, "ps", "-aq", "--filter", f"name=codehub-files-{wid}"], capture_output=True, text=True
        )
        assert left.stdout.strip() == ""


async def test_clone_lands_in_the_volume(hub: Hub, server: str, tmp_path: Path) -> None:
    bare = make_repo(tmp_path, "repo.git", branches={"main": {"x.txt": "x\n", "sub/y.txt": "y\n"}})
    async with hub.client() as client:
        ws = await create(client, "cloned", server_id=server, git_url=f"file://{bare}")
        body = await wait_state(client, ws["id"], {"created", "failed"})
        while body["state_reason"] == "cloning":
            body = await wait_state(client, ws["id"], {"created", "failed"})
        assert body["state"] == "created", body["state_reason"]
        await start(client, ws["id"])
        assert await sh(client, ws["id"], "cat x.txt sub/y.txt; git log --oneline | wc -l") == "x\ny\n2\n"
        await client.delete(f"/api/workspaces/{ws['id']}", params={"purge": "true"})


async def test_directory_from_before_volumes_is_adopted_byte_exact(hub: Hub, server: str) -> None:
    async with hub.client() as client:
        ws = await create(client, "legacy", server_id=server)
        wid = ws["id"]
        old = hub.settings.resolved_workspaces_dir / wid  # where a bind-mounted workspace kept its files
        (old / "src" / "deep").mkdir(parents=True)
        blob = bytes(range(256)) * 64
        (old / "src" / "deep" / "blob.bin").write_bytes(blob)
        (old / "run.sh").write_text("#!/bin/sh\necho ran\n")
        (old / "run.sh").chmod(0o755)
        (old / "empty").write_bytes(b"")
        (old / "naïve name.txt").write_text("ünïcode\n")
        (old / "link").symlink_to("src/deep/blob.bin")
        await start(client, wid)
        assert not old.exists()  # verified, then deleted
        listing = await sh(client, wid, "sha256sum src/deep/blob.bin; ./run.sh; readlink link; cat 'naïve name.txt'")
        assert listing.split("\n")[1:] == ["ran", "src/deep/blob.bin", "ünïcode", ""]
        assert listing.split()[0] == hashlib.sha256(blob).hexdigest()
        assert await sh(client, wid, "stat -c '%a %u' run.sh empty") == "755 1000\n644 1000\n"
        await client.delete(f"/api/workspaces/{wid}", params={"purge": "true"})
