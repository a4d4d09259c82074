"""The relay and the terminal against real workspaces: the test image's ``wsecho`` (HTTP + WebSocket echo)
started by the lifecycle on the local Docker engine or the Kubernetes test cluster (``container_hub``), and a
shell on a TTY through ``docker exec`` or ``pods/exec``."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect

from tests.support.relay import RelayHub
from tests.support.terminal import terminal_refusals, terminal_session

pytestmark = pytest.mark.anyio


async def test_http_through_the_relay_to_wsecho(container_hub: RelayHub, running_ws: str) -> None:
    async with container_hub.client(container_hub.alice) as client:
        r = await client.get(f"/w/{running_ws}/some/file.js?v=1", headers={"Origin": container_hub.url})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["path"] == "/some/file.js?v=1"
        host = container_hub.url.removeprefix("http://")
        assert seen["headers"]["host"] == host and seen["headers"]["origin"] == container_hub.url
        assert seen["headers"]["x-forwarded-prefix"] == f"/w/{running_ws}"
        assert "authorization" not in seen["headers"]
        r = await client.post(f"/w/{running_ws}/upload", content=b"z" * 300_000)
        assert r.status_code == 200 and len(r.json()["body"]) == 300_000
        assert (await client.get(f"/w/{running_ws}/healthz")).text.strip() == "ok"


async def test_websocket_through_the_relay_to_wsecho(container_hub: RelayHub, running_ws: str) -> None:
    url = f"{container_hub.ws_url}/w/{running_ws}/socket?x=1"
    headers = {"Authorization": f"Bearer {container_hub.alice}"}
    async with connect(
        url, additional_headers=headers, origin=container_hub.url, compression=None, max_size=None
    ) as ws:
        for i in range(50):
            await ws.send(f"frame {i}")
            await ws.send(bytes([i]) * 70_000)
            assert await ws.recv() == f"frame {i}"
            assert await ws.recv() == bytes([i]) * 70_000
        await (await ws.ping())
    counters = container_hub.relay.stats.of(running_ws)
    assert counters.websockets_total >= 1 and counters.bytes_down > 3_000_000
    assert json.dumps(counters.as_dict())


async def test_terminal_in_the_workspace(container_hub: RelayHub, running_ws: str) -> None:
    async with container_hub.client(container_hub.alice) as client:
        stopped = (await client.post("/api/workspaces", json={"name": "stopped"})).json()["id"]
    await terminal_session(container_hub.url, running_ws, container_hub.alice)
    await terminal_refusals(container_hub.url, running_ws, container_hub.alice, container_hub.bob, stopped)
    assert container_hub.relay.stats.of(running_ws).terminals_open == 0
