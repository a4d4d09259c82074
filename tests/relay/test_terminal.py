"""The web terminal (``WS /ws/workspaces/{id}``) over the local runtime (a pty): keystrokes, output, resize,
exit status on close, access rules and activity."""

from __future__ import annotations

import anyio
import pytest

from tests.support.lifecycle import wait_state
from tests.support.relay import RelayHub
from tests.support.terminal import open_terminal, read_until, terminal_refusals, terminal_session

pytestmark = pytest.mark.anyio


async def test_local_terminal(relay_hub: RelayHub) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        ws = (await client.post("/api/workspaces", json={"name": "term-local"})).json()["id"]
        await client.post(f"/api/workspaces/{ws}/start")
        assert (await wait_state(client, ws, {"running", "failed"}))["state"] == "running"
        stopped = (await client.post("/api/workspaces", json={"name": "term-stopped"})).json()["id"]
        await terminal_session(relay_hub.url, ws, relay_hub.alice)
        await terminal_refusals(relay_hub.url, ws, relay_hub.alice, relay_hub.bob, stopped)
        counters = relay_hub.relay.stats.of(ws)
        assert counters.terminals_open == 0 and counters.bytes_up > 0 and counters.bytes_down > 0
        with anyio.fail_after(5):
            while (await client.get(f"/api/workspaces/{ws}")).json()["last_activity_source"] != "terminal":
                await anyio.sleep(0.1)
        async with open_terminal(relay_hub.url, ws, relay_hub.alice) as term:
            await term.send("echo open\r")
            await read_until(term, "open")
        with anyio.fail_after(5):  # closing the WebSocket hung up the shell
            while relay_hub.relay.stats.of(ws).terminals_open:
                await anyio.sleep(0.05)
        await client.post(f"/api/workspaces/{ws}/stop")
