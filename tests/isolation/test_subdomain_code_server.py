"""The real thing in subdomain mode: code-server (``codehub/code-server:local``) on ``<id>.ws.localhost`` in
headless Chromium, entered through the hub's ticket flow, its workbench rendered and its WebSocket connected on
the workspace's own origin; then a port the workspace serves, at ``<port>--<id>.ws.localhost``, through
code-server's ``/proxy/<port>/``. A screenshot goes to ``test-artifacts/`` (gitignored)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.factory import create_app
from app.streams.relay.splice import SpliceProtocol
from tests.support.browser import artifact, chromium, need_browser
from tests.support.relay import RelayHub
from tests.support.runtime import remove_hub_containers
from tests.support.server import admin_token, free_port, serve_asgi
from tests.support.settings import code_server_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

PORT_APP = "require('http').createServer((q, s) => s.end('port app saw ' + q.url)).listen(9011, '127.0.0.1')"


@pytest.fixture
async def cs_hub(sqlite_url: str, tmp_path: Path) -> AsyncIterator[RelayHub]:
    """A subdomain-mode hub on ``localhost`` whose workspaces run the real code-server image."""
    need_browser()
    port = free_port()
    settings = code_server_settings(
        tmp_path / "data",
        sqlite_url,
        public_url=f"http://localhost:{port}",
        workspace_domain="ws.localhost",
    )
    try:
        token = await admin_token(settings)
        app = create_app(settings)
        async with serve_asgi(app, port=port, ws=SpliceProtocol) as base:
            hub = RelayHub(base, settings, token, app=app)
            hub.alice = await hub.new_user("alice")
            yield hub
    finally:
        remove_hub_containers(settings.hub_id)


async def test_code_server_on_its_own_origin(cs_hub: RelayHub) -> None:
    origin = cs_hub.settings.public_url
    async with cs_hub.client(cs_hub.alice) as client:
        ws_id = (await client.post("/api/workspaces", json={"name": "code"})).json()["id"]
        r = await client.post(f"/api/workspaces/{ws_id}/start", params={"wait": "true"}, timeout=120)
        assert r.status_code in (200, 202) and r.json()["state"] == "running", r.text
        r = await client.post(
            f"/api/workspaces/{ws_id}/execute",
            json={"command": f'nohup node -e "{PORT_APP}" >/dev/null 2>&1 &', "timeout_s": 20},
        )
        assert r.status_code == 200, r.text
    async with httpx.AsyncClient(base_url=cs_hub.url) as anon:
        r = await anon.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
        session = r.cookies["codehub_session"]
    ide_origin = f"http://{ws_id}.ws.localhost:{origin.rsplit(':', 1)[1]}"
    sockets: list[Any] = []
    frames = {"received": 0}

    def on_socket(socket: Any) -> None:
        sockets.append(socket)
        socket.on("framereceived", lambda _: frames.__setitem__("received", frames["received"] + 1))

    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        await context.add_cookies(
            [{"name": "codehub_session", "value": session, "url": origin, "httpOnly": True, "sameSite": "Lax"}]
        )
        page = await context.new_page()
        page.on("websocket", on_socket)
        await page.goto(f"{origin}/w/{ws_id}/", timeout=60_000)
        assert page.url.startswith(ide_origin + "/"), page.url
        await page.wait_for_selector(".monaco-workbench", timeout=120_000)
        with anyio.fail_after(60):
            while not any(s.url.startswith(f"ws://{ws_id}.ws.localhost") and not s.is_closed() for s in sockets):
                await anyio.sleep(0.25)
            while frames["received"] < 5:
                await anyio.sleep(0.25)
        await anyio.sleep(2)  # stays connected: a refused origin would close it at once (1006)
        await page.screenshot(path=str(artifact("subdomain-code-server.png")))
        cookies = {(c["name"], c["domain"]): c for c in await context.cookies()}
        port_page = await context.new_page()
        with anyio.fail_after(30):
            while True:
                response = await port_page.goto(f"{origin}/w/9011--{ws_id}/hello?x=1", timeout=30_000)
                if response is not None and response.status == 200:
                    break
                await anyio.sleep(0.5)  # the port app may still be starting
        port_text = await port_page.inner_text("body")
        port_url = port_page.url
    live = [s for s in sockets if s.url.startswith(f"ws://{ws_id}.ws.localhost")]
    assert live and not all(s.is_closed() for s in live)
    ws_cookie = cookies[("codehub_ws", f"{ws_id}.ws.localhost")]
    assert ws_cookie["httpOnly"] and ws_cookie["sameSite"] == "Lax"
    assert ("codehub_session", "localhost") in cookies
    assert not [name for name, domain in cookies if domain.startswith(".")]  # every cookie host-only
    assert port_url.startswith(f"http://9011--{ws_id}.ws.localhost:")
    assert port_text == "port app saw /hello?x=1"
    assert cs_hub.relay.stats.of(ws_id).failed_upgrades == 0
