"""The relay and the terminal against real containers: the test image's ``wsecho`` (HTTP + WebSocket echo)
started by the lifecycle on the local Docker engine, and ``docker exec`` with a TTY."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from websockets.asyncio.client import connect

from app.factory import create_app
from app.streams.relay.splice import SpliceProtocol
from tests.support.databases import fresh_database
from tests.support.lifecycle import wait_state
from tests.support.relay import RelayHub
from tests.support.runtime import remove_hub_containers
from tests.support.server import admin_token, serve_asgi
from tests.support.services import TEST_IMAGE, need_docker
from tests.support.settings import make_settings
from tests.support.terminal import terminal_refusals, terminal_session

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module", params=["splice", "frames"])
def mode_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A WebSocket mode (spliced as ``codehub serve`` runs, or relayed messages) and a database for its hub."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("dockerdb")) as url:
        yield request.param, url


@pytest.fixture(scope="module")
async def docker_hub(mode_db: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RelayHub]:
    """A hub running the test image on the local engine; its containers are removed at the end."""
    docker_url = need_docker(TEST_IMAGE)
    mode, relay_db = mode_db
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=relay_db,
        runtime="docker",
        docker_url=docker_url,
        default_image=TEST_IMAGE,
        workspace_mount="/workspace",
        default_cpu=0.5,
        default_memory_mb=256,
        start_timeout=20,
        stop_grace=2,
        idle_timeout=0,
    )
    try:
        token = await admin_token(settings)
        app = create_app(settings)
        async with serve_asgi(app, ws=SpliceProtocol if mode == "splice" else "websockets-sansio") as base:
            hub = RelayHub(base, settings, token, app=app, ws_url=base.replace("http://", "ws://"), mode=mode)
            hub.alice = await hub.new_user("alice")
            hub.bob = await hub.new_user("bob")
            yield hub
    finally:
        remove_hub_containers(settings.hub_id)


@pytest.fixture(scope="module")
async def running_ws(docker_hub: RelayHub) -> str:
    """Alice's workspace, started by the lifecycle (a wsecho container)."""
    async with docker_hub.client(docker_hub.alice) as client:
        ws = (await client.post("/api/workspaces", json={"name": "docker-relay"})).json()["id"]
        await client.post(f"/api/workspaces/{ws}/start")
        body = await wait_state(client, ws, {"running", "failed"})
        assert body["state"] == "running", body["state_reason"]
    return ws


async def test_http_through_the_relay_to_wsecho(docker_hub: RelayHub, running_ws: str) -> None:
    async with docker_hub.client(docker_hub.alice) as client:
        r = await client.get(f"/w/{running_ws}/some/file.js?v=1", headers={"Origin": docker_hub.url})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["path"] == "/some/file.js?v=1"
        host = docker_hub.url.removeprefix("http://")
        assert seen["headers"]["host"] == host and seen["headers"]["origin"] == docker_hub.url
        assert seen["headers"]["x-forwarded-prefix"] == f"/w/{running_ws}"
        assert "authorization" not in seen["headers"]
        r = await client.post(f"/w/{running_ws}/upload", content=b"z" * 300_000)
        assert r.status_code == 200 and len(r.json()["body"]) == 300_000
        assert (await client.get(f"/w/{running_ws}/healthz")).text.strip() == "ok"


async def test_websocket_through_the_relay_to_wsecho(docker_hub: RelayHub, running_ws: str) -> None:
    url = f"{docker_hub.ws_url}/w/{running_ws}/socket?x=1"
    headers = {"Authorization": f"Bearer {docker_hub.alice}"}
    async with connect(url, additional_headers=headers, origin=docker_hub.url, compression=None, max_size=None) as ws:
        for i in range(50):
            await ws.send(f"frame {i}")
            await ws.send(bytes([i]) * 70_000)
            assert await ws.recv() == f"frame {i}"
            assert await ws.recv() == bytes([i]) * 70_000
        await (await ws.ping())
    counters = docker_hub.relay.stats.of(running_ws)
    assert counters.websockets_total >= 1 and counters.bytes_down > 3_000_000
    assert json.dumps(counters.as_dict())


async def test_docker_terminal(docker_hub: RelayHub, running_ws: str) -> None:
    async with docker_hub.client(docker_hub.alice) as client:
        stopped = (await client.post("/api/workspaces", json={"name": "docker-stopped"})).json()["id"]
    await terminal_session(docker_hub.url, running_ws, docker_hub.alice)
    await terminal_refusals(docker_hub.url, running_ws, docker_hub.alice, docker_hub.bob, stopped)
    assert docker_hub.relay.stats.of(running_ws).terminals_open == 0
