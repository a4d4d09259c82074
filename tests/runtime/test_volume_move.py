"""Moving a stopped workspace to another engine takes its volume along: streamed engine to engine through the
hub, verified by a manifest before the switch, the old volume removed only after it. A target that fails
midway leaves the workspace whole on its source and no copy on the target."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from tests.support.databases import fresh_database
from tests.support.lifecycle import create
from tests.support.runtime import remove_hub_containers
from tests.support.server import Hub, running_hub
from tests.support.services import DOCKER_URL, need_second_engine
from tests.support.settings import docker_settings
from tests.support.sse_client import open_sse

pytestmark = pytest.mark.anyio
BLOB = os.urandom(3 << 20) + bytes(range(256))  # binary, larger than the failing proxy lets through


@pytest.fixture(scope="module")
def data_and_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data dir and a migrated SQLite database for this module's hub."""
    data = tmp_path_factory.mktemp("data")
    with fresh_database("sqlite", data) as url:
        yield data, url


@pytest.fixture(scope="module")
async def hub(data_and_db: tuple[Path, str]) -> AsyncIterator[Hub]:
    """A Docker hub; everything of its hub id is removed on both engines at the end."""
    data, url = data_and_db
    second = need_second_engine()
    settings = docker_settings(data, url)
    try:
        async with running_hub(settings) as running:
            yield running
    finally:
        remove_hub_containers(settings.hub_id)
        remove_hub_containers(settings.hub_id, docker_host=second)


async def server_id(client: httpx.AsyncClient, url: str, name: str) -> str:
    """The id of the server at ``url`` (registered as ``name`` if missing)."""
    servers = (await client.get("/api/admin/servers")).json()
    found = next((s for s in servers if s["docker_url"] == url), None)
    if found is None:
        r = await client.post("/api/admin/servers", json={"name": name, "docker_url": url})
        assert r.status_code == 201, r.text
        found = r.json()
    return str(found["id"])


def volumes(url: str, workspace_id: str) -> list[str]:
    """Names of the engine's volumes labelled with ``workspace_id``."""
    out = subprocess.run(
        ["docker", "-H", url, "volume", "ls", "-q", "--filter", f"label=codehub.workspace={workspace_id}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


async def sh(client: httpx.AsyncClient, workspace_id: str, command: str) -> str:
    """Run ``command`` in the running workspace; its stdout."""
    r = await client.post(f"/api/workspaces/{workspace_id}/execute", json={"command": command})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return str(r.json()["stdout"])


async def fill(client: httpx.AsyncClient, wid: str) -> None:
    """Files, a binary blob, an executable, a link, a dangling link and empty directories, then stopped."""
    put = f"/api/workspaces/{wid}/files/content"
    assert (await client.put(put, params={"path": "src/blob.bin"}, content=BLOB)).status_code == 201
    assert (await client.put(put, params={"path": "naïve name.txt"}, content=b"\xc3\xbc\n")).status_code == 201
    r = await client.post(f"/api/workspaces/{wid}/start", params={"wait": "true"})
    assert r.json()["state"] == "running", r.text
    await sh(
        client,
        wid,
        "mkdir -p empty/deeper lone && ln -s src/blob.bin link && ln -s ../nowhere dangling"
        " && printf '#!/bin/sh\\necho ran\\n' > run.sh && chmod 750 run.sh && : > zero && echo kept > ~/.settings",
    )
    assert (await client.post(f"/api/workspaces/{wid}/stop")).json()["state"] == "stopped"


async def check_files(client: httpx.AsyncClient, wid: str) -> None:
    """Everything ``fill`` made, byte-exact, through the files API (and the home beside the project)."""
    content = f"/api/workspaces/{wid}/files/content"
    r = await client.get(content, params={"path": "src/blob.bin", "raw": "true"})
    assert r.status_code == 200 and r.content == BLOB
    assert (await client.get(content, params={"path": "naïve name.txt"})).json()["content"] == "ü\n"
    tree = (await client.get(f"/api/workspaces/{wid}/files/tree", params={"depth": 3})).json()["entries"]
    kinds = {e["path"]: e["type"] for e in tree}
    assert {k: kinds.get(k) for k in ("empty", "empty/deeper", "lone", "link", "dangling", "zero", "run.sh")} == {
        "empty": "dir",
        "empty/deeper": "dir",
        "lone": "dir",
        "link": "symlink",
        "dangling": "symlink",
        "zero": "file",
        "run.sh": "file",
    }, tree
    r = await client.post(f"/api/workspaces/{wid}/start", params={"wait": "true"})
    assert r.json()["state"] == "running", r.text
    out = await sh(
        client, wid, "readlink link; readlink dangling; stat -c '%a %u %s' run.sh zero; ./run.sh; cat ~/.settings"
    )
    assert out == "src/blob.bin\n../nowhere\n750 1000 19\n644 1000 0\nran\nkept\n"
    assert (await client.post(f"/api/workspaces/{wid}/stop")).json()["state"] == "stopped"


async def place(client: httpx.AsyncClient, wid: str, target: str) -> httpx.Response:
    return await client.post(f"/api/admin/workspaces/{wid}/place", json={"server_id": target}, timeout=120)


async def test_move_there_and_back_byte_exact(hub: Hub) -> None:
    second_url = need_second_engine()
    async with hub.client() as client:
        local = await server_id(client, DOCKER_URL, "engine-local")
        second = await server_id(client, second_url, "engine-second")
        ws = await create(client, "mover", server_id=local)
        wid = ws["id"]
        await fill(client, wid)

        r = await place(client, wid, second)
        assert r.status_code == 200, r.text
        assert r.json()["server_id"] == second
        assert volumes(DOCKER_URL, wid) == [] and volumes(second_url, wid) == [f"codehub-home-{wid}"]
        await check_files(client, wid)

        r = await place(client, wid, local)
        assert r.status_code == 200, r.text
        assert volumes(second_url, wid) == [] and volumes(DOCKER_URL, wid) == [f"codehub-home-{wid}"]
        await check_files(client, wid)

        # progress on the workspace's topic, and the manifest's hash in the audit log
        params = {"topic": f"workspace:{wid}", "since": "earliest"}
        moving, placed = [], []
        async with open_sse(client, "/api/events", params=params) as stream:
            while len(placed) < 2:
                frame = await stream.next()
                if frame.event == "workspace.moving":
                    moving.append(frame.data["data"])
                elif frame.event == "workspace.placed" and "manifest_sha256" in frame.data["data"]:
                    placed.append(frame.data["data"]["manifest_sha256"])
        assert moving and moving[-1]["bytes_done"] > len(BLOB) and moving[-1]["files_done"] >= 10
        audit = (await client.get("/api/admin/audit/", params={"action": "workspace.place"})).json()["items"]
        hashes = [a["details"]["manifest_sha256"] for a in audit if a["workspace_id"] == wid]
        assert len(hashes) == 2 and set(hashes) == set(placed) and len(hashes[0]) == 64
        await client.delete(f"/api/workspaces/{wid}", params={"purge": "true"})


class CuttingProxy:
    """A TCP proxy to an engine that cuts the first ``PUT …/archive`` after ``allow`` bytes (a dying target)."""

    def __init__(self, upstream: str, allow: int) -> None:
        parsed = urlparse(upstream)
        self.host, self.port, self.allow, self.cut = parsed.hostname or "", parsed.port or 2375, allow, 0

    async def handle(self, client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(self.host, self.port) as upstream, anyio.create_task_group() as tg:

            async def back() -> None:
                try:
                    async for chunk in upstream:
                        await client.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(back)
            seen, counting = b"", -1
            try:
                async for chunk in client:
                    seen = seen[-64:] + chunk[:4096]
                    if counting < 0 and b"PUT /" in seen and b"/archive?" in seen and not self.cut:
                        counting = 0
                    if counting >= 0:
                        counting += len(chunk)
                        if counting > self.allow:
                            self.cut += 1
                            break
                    await upstream.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            tg.cancel_scope.cancel()


async def test_target_failing_midway_leaves_the_workspace_whole(hub: Hub) -> None:
    second_url = need_second_engine()
    proxy = CuttingProxy(second_url, allow=256 << 10)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with hub.client() as client, listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy.handle)
        port = listener.extra(SocketAttribute.local_port)
        local = await server_id(client, DOCKER_URL, "engine-local")
        dying = await server_id(client, f"tcp://127.0.0.1:{port}", f"dying-{port}")
        ws = await create(client, "stays", server_id=local)
        wid = ws["id"]
        await fill(client, wid)

        r = await place(client, wid, dying)
        assert r.status_code == 502, r.text
        assert r.json()["error"] == "move_failed" and "stays where it was" in r.json()["detail"]
        assert "127.0.0" not in r.json()["detail"] and "/var/lib" not in r.json()["detail"]
        assert proxy.cut == 1
        assert (await client.get(f"/api/workspaces/{wid}")).json()["server_id"] == local
        assert volumes(second_url, wid) == []  # the partial copy was removed
        assert volumes(DOCKER_URL, wid) == [f"codehub-home-{wid}"]
        await check_files(client, wid)

        # a target that already holds a volume of this workspace is refused before anything is copied
        subprocess.run(
            [
                "docker",
                "-H",
                second_url,
                "volume",
                "create",
                "--label",
                f"codehub.workspace={wid}",
                f"codehub-home-{wid}",
            ],
            capture_output=True,
            check=True,
        )
        second = await server_id(client, second_url, "engine-second")
        r = await place(client, wid, second)
        assert r.status_code == 409 and r.json()["error"] == "target_has_volume", r.text
        subprocess.run(["docker", "-H", second_url, "volume", "rm", f"codehub-home-{wid}"], capture_output=True)
        assert (await client.get(f"/api/workspaces/{wid}")).json()["server_id"] == local
        await client.delete(f"/api/workspaces/{wid}", params={"purge": "true"})
        assert json.dumps(volumes(DOCKER_URL, wid)) == "[]"
        tg.cancel_scope.cancel()
