"""Subdomain mode end to end with a real Docker workspace (``codehub/workspace:test``, whose ``wsecho`` echoes
what it receives): entered through the ticket flow, the IDE host relays HTTP and WebSocket with the browser's
``Host`` and no hub credential, a port host reaches code-server's ``/proxy/<port>/`` path, sibling origins
cannot upgrade, and the terminal stays on the hub's origin (the workspace cookie opens no shell there)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.server import Hub, admin_token, free_port, serve_asgi
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio

DOMAIN = "ws.localhost"


@pytest.fixture
async def docker_hub(sqlite_url: str, tmp_path: Path, hub_id: str) -> AsyncIterator[Hub]:
    """A subdomain-mode hub on a known port running ``codehub/workspace:test`` workspaces."""
    from app.factory import create_app

    port = free_port()
    settings = docker_settings(
        tmp_path / "data",
        sqlite_url,
        hub_id=hub_id,
        idle_timeout=0,
        public_url=f"http://127.0.0.1:{port}",
        workspace_domain=DOMAIN,
    )
    token = await admin_token(settings)
    async with serve_asgi(create_app(settings), port=port) as url:
        yield Hub(url, settings, token)


async def enter(hub: Hub, session: str, label: str, port: int) -> str:
    """The whole entry flow, as a browser follows it; the workspace cookie."""
    host = f"{label}.{DOMAIN}:{port}"
    async with (
        httpx.AsyncClient(base_url=hub.url, cookies={"codehub_session": session}) as on_hub,
        httpx.AsyncClient(base_url=hub.url, headers={"Host": host}) as on_ws,
    ):
        start = urlsplit((await on_hub.get(f"/w/{label}/")).headers["location"])
        r = await on_ws.get(f"{start.path}?{start.query}")
        state = r.cookies["codehub_ws_state"]
        ticket = urlsplit((await on_hub.get(r.headers["location"])).headers["location"])
        assert parse_qs(ticket.query)["ticket"]
        r = await on_ws.get(f"{ticket.path}?{ticket.query}", headers={"Cookie": f"codehub_ws_state={state}"})
        assert r.status_code == 302, r.text
        return r.cookies["codehub_ws"]


async def test_a_real_workspace_on_its_own_origin(docker_hub: Hub) -> None:
    hub = docker_hub
    port = int(hub.url.rsplit(":", 1)[1])
    alice = await hub.new_user("alice")
    async with hub.client(alice) as client:
        ws_id = (await client.post("/api/workspaces", json={"name": "echo"})).json()["id"]
        r = await client.post(f"/api/workspaces/{ws_id}/start", params={"wait": "true"}, timeout=60)
        assert r.json()["state"] == "running", r.text
    async with httpx.AsyncClient(base_url=hub.url) as anon:
        session = (await anon.post("/api/auth/login", json={"username": "alice", "password": "password-123"})).cookies[
            "codehub_session"
        ]
    cookie = await enter(hub, session, ws_id, port)
    host = f"{ws_id}.{DOMAIN}:{port}"
    jar = {"Host": host, "Cookie": f"codehub_ws={cookie}; theirs=1"}
    async with httpx.AsyncClient(base_url=hub.url, headers=jar) as on_ws:
        seen = (await on_ws.get("/some/page?q=1")).json()
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"].startswith("/some/page")
        assert headers["host"] == host and headers["x-forwarded-host"] == host
        assert "codehub_" not in str(seen) and cookie not in str(seen) and "theirs=1" in str(headers.get("cookie"))
        assert (await on_ws.get("/api/auth/me")).status_code == 421
        port_host = f"9000--{ws_id}.{DOMAIN}:{port}"
    port_cookie = await enter(hub, session, f"9000--{ws_id}", port)
    async with httpx.AsyncClient(base_url=hub.url, headers={"Host": port_host}) as on_port:
        seen = (await on_port.get("/api/items", headers={"Cookie": f"codehub_ws={port_cookie}"})).json()
        assert seen["path"].startswith("/proxy/9000/api/items")
    url = f"ws://{host}/socket"
    async with connect(
        url, host="127.0.0.1", additional_headers={"Cookie": f"codehub_ws={cookie}"}, origin=f"http://{host}"
    ) as sock:
        await sock.send("over its own origin")
        assert await sock.recv() == "over its own origin"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            url,
            host="127.0.0.1",
            additional_headers={"Cookie": f"codehub_ws={cookie}"},
            origin=f"http://9000--{ws_id}.{DOMAIN}:{port}",
        ):
            pass
    assert refused.value.response.status_code == 403
    terminal = f"{hub.url.replace('http://', 'ws://')}/ws/workspaces/{ws_id}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(terminal, additional_headers={"Cookie": f"codehub_session={cookie}"}, origin=hub.url):
            pass
    assert refused.value.response.status_code == 401
    async with connect(terminal, additional_headers={"Cookie": f"codehub_session={session}"}, origin=hub.url) as shell:
        await shell.send("echo hub-$((6*7))\r")
        output = b""
        with anyio.fail_after(20):
            while b"hub-42" not in output:
                frame = await shell.recv()
                output += frame if isinstance(frame, bytes) else frame.encode()
