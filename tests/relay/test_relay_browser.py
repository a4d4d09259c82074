"""The real thing: code-server (``codehub/code-server:local``) through the relay in headless Chromium.

The browser opens ``/w/{id}/`` of a workspace that is not running without being signed in: the relay's sign-in
page links to the dashboard's login with ``next``, which signs in and comes back; the relay starts the workspace
(Docker, through the lifecycle) and shows the starting page, which follows the lifecycle over SSE and reloads;
then code-server's workbench renders and its WebSocket connects through the relay. A screenshot goes to
``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from app.factory import create_app
from app.streams.relay.splice import SpliceProtocol
from tests.support.browser import artifact, chromium, need_browser
from tests.support.databases import fresh_database
from tests.support.relay import RelayHub
from tests.support.runtime import remove_hub_containers
from tests.support.server import admin_token, serve_asgi
from tests.support.settings import code_server_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module", params=["splice", "frames"])
def mode_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A WebSocket mode (spliced as ``codehub serve`` runs, or relayed messages) and a database for its hub."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("csdb")) as url:
        yield request.param, url


@pytest.fixture(scope="module")
async def cs_hub(mode_db: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RelayHub]:
    """A hub whose workspaces run the real code-server image on the local Docker engine."""
    mode, relay_db = mode_db
    need_browser()
    settings = code_server_settings(
        tmp_path_factory.mktemp("data"),
        relay_db,
    )
    try:
        token = await admin_token(settings)
        app = create_app(settings)
        async with serve_asgi(app, ws=SpliceProtocol if mode == "splice" else "websockets-sansio") as base:
            hub = RelayHub(base, settings, token, app=app, ws_url=base.replace("http://", "ws://"), mode=mode)
            hub.alice = await hub.new_user("alice")
            yield hub
    finally:
        remove_hub_containers(settings.hub_id)


async def test_code_server_workbench_through_the_relay(cs_hub: RelayHub) -> None:
    async with cs_hub.client(cs_hub.alice) as client:
        ws_id = (await client.post("/api/workspaces", json={"name": "code"})).json()["id"]
    sockets: list[Any] = []
    frames = {"received": 0, "sent": 0}
    statuses: list[tuple[int, str]] = []

    def on_socket(socket: Any) -> None:
        sockets.append(socket)
        socket.on("framereceived", lambda _: frames.__setitem__("received", frames["received"] + 1))
        socket.on("framesent", lambda _: frames.__setitem__("sent", frames["sent"] + 1))

    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        page = await context.new_page()
        page.on("websocket", on_socket)
        page.on("response", lambda r: r.request.is_navigation_request() and statuses.append((r.status, r.url)))
        response = await page.goto(f"{cs_hub.url}/w/{ws_id}/", timeout=60_000)
        assert response is not None
        first = response.status
        await page.click("a[href^='/?next=']")
        await page.fill("#login-username", "alice")
        await page.fill("#login-password", "password-123")
        await page.click("#login-form button[type=submit]")
        await page.wait_for_selector(".monaco-workbench", timeout=120_000)
        await page.wait_for_selector(".explorer-folders-view, .monaco-workbench .part.sidebar", timeout=60_000)
        with anyio.fail_after(60):
            while not any(f"/w/{ws_id}/" in s.url and not s.is_closed() for s in sockets) or frames["received"] < 5:
                await anyio.sleep(0.25)
        await anyio.sleep(2)  # stays connected: a refused origin would close it at once (1006)
        await page.screenshot(path=str(artifact(f"relay-code-server-{cs_hub.mode}.png")))
        cookies = {c["name"]: c for c in await context.cookies()}
    assert first == 401  # the sign-in page
    assert statuses[1] == (200, f"{cs_hub.url}/?next=%2Fw%2F{ws_id}%2F")  # the dashboard's login
    assert statuses[2] == (503, f"{cs_hub.url}/w/{ws_id}/")  # back, to the starting page (the workspace was stopped)
    assert cookies["codehub_session"]["httpOnly"]
    live = [s for s in sockets if f"/w/{ws_id}/" in s.url]
    assert live and not all(s.is_closed() for s in live)
    assert frames["sent"] > 0 and frames["received"] > 0
    counters = cs_hub.relay.stats.of(ws_id)
    assert counters.websockets_total >= 1 and counters.http_requests > 10 and counters.failed_upgrades == 0
