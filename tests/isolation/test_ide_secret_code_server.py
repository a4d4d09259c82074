"""Attacks on a real code-server workspace (``codehub/code-server:local``, whose image says ``--auth none``): its
published port answers nobody without the start's secret (login redirect or 401, never the workbench, and no
WebSocket), the hub's relay gets the workbench and its WebSocket, and a restart makes the old secret useless."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.isolation.ide_helpers import credential, direct_get, socket_path, upgrade_status, workspace_row
from tests.support.runtime import remove_hub_containers
from tests.support.server import Hub, running_hub
from tests.support.settings import code_server_settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKBENCH = "workbench-web-configuration"


@pytest.fixture
async def cs_hub(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub whose workspaces run the real code-server image on the local Docker engine."""
    settings = code_server_settings(
        tmp_path / "data",
        sqlite_url,
    )
    try:
        async with running_hub(settings) as hub:
            yield hub
    finally:
        remove_hub_containers(settings.hub_id)


def refused(status: int, location: str) -> bool:
    """code-server's answer to a request without a valid session: 401, or a redirect to its login page."""
    return status == 401 or (status == 302 and "login" in location)


async def test_code_server_answers_only_the_relay(cs_hub: Hub) -> None:
    settings = cs_hub.settings
    token = await cs_hub.new_user("alice")
    async with cs_hub.client(token) as client:
        ws = (await client.post("/api/workspaces", json={"name": "code"})).json()["id"]
        r = await client.post(f"/api/workspaces/{ws}/start", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
    row = await workspace_row(settings, ws)
    endpoint, secret = str(row.endpoint), credential(settings, ws, row.generation)

    for cookie in (None, "code-server-session=guess", f"codehub_session={token}", f"key={secret}"):
        for path in ("/", "/?folder=/home/coder/project", "/static/out/vs/code/browser/workbench/workbench.js"):
            r = await direct_get(endpoint, path, cookie)
            assert refused(r.status_code, r.headers.get("location", "")), (path, cookie, r.status_code)
            assert WORKBENCH not in r.text
    for headers in ({}, {"Cookie": "code-server-session=guess"}):
        assert await upgrade_status(f"ws://{endpoint}{socket_path()}", headers) == 401

    container = json.loads(subprocess.run(["docker", "inspect", row.container_id], capture_output=True).stdout)[0]
    argv = [*container["Config"]["Entrypoint"], *container["Config"]["Cmd"]]
    assert "--auth" in argv and argv[argv.index("--auth") + 1] == "password" and argv[-1] == "/home/coder/project"
    assert f"HASHED_PASSWORD={secret}" in container["Config"]["Env"]  # engine access is root anyway
    assert not any(item.startswith("CODEHUB_IDE_SECRET=") for item in container["Config"]["Env"])

    async with cs_hub.client(token, follow_redirects=True) as client:
        page = await client.get(f"/w/{ws}/", headers={"Cookie": "code-server-session=forged"})
        assert page.status_code == 200 and WORKBENCH in page.text, page.text[:300]
        assert "folder=" in str(page.url)  # code-server redirected to the workspace folder, not to its login
        assert secret not in page.text and secret not in str(page.headers)
    hub_socket = f"{cs_hub.url.replace('http', 'ws')}/w/{ws}{socket_path('/')}"
    bearer = {"Authorization": f"Bearer {token}"}
    assert await upgrade_status(hub_socket, bearer, origin=cs_hub.url) == 101

    async with cs_hub.client(token) as client:
        r = await client.post(f"/api/workspaces/{ws}/restart", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
    restarted = await workspace_row(settings, ws)
    fresh, endpoint = credential(settings, ws, restarted.generation), str(restarted.endpoint)
    assert fresh != secret
    r = await direct_get(endpoint, "/", f"code-server-session={secret}")
    assert refused(r.status_code, r.headers.get("location", ""))
    old_cookie = {"Cookie": f"code-server-session={secret}"}
    assert await upgrade_status(f"ws://{endpoint}{socket_path()}", old_cookie) == 401
    r = await direct_get(endpoint, "/", f"code-server-session={fresh}")
    assert r.status_code == 302 and "login" not in r.headers["location"]  # the new one opens the folder
    assert await upgrade_status(hub_socket, bearer, origin=cs_hub.url) == 101
