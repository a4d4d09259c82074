"""Web terminal helpers for tests: open a terminal WebSocket, read its output, and the shared scenarios."""

from __future__ import annotations

import json

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def open_terminal(  # type: ignore[no-untyped-def]
    hub_url: str, ws_id: str, token: str, *, query: str = "", origin: str | None = None, cookie: bool = False
):
    """A terminal WebSocket with a Bearer token (or ``token`` as the session cookie) and the hub's own Origin."""
    base = hub_url.replace("http://", "ws://")
    return connect(
        f"{base}/ws/workspaces/{ws_id}{query}",
        additional_headers={"Cookie": f"codehub_session={token}"} if cookie else {"Authorization": f"Bearer {token}"},
        origin=origin or hub_url,
        compression=None,
        open_timeout=20,
    )


async def read_until(ws: ClientConnection, needle: str, timeout: float = 10) -> str:
    """Terminal output until ``needle`` shows up."""
    seen = ""
    with anyio.fail_after(timeout):
        while needle not in seen:
            message = await ws.recv()
            seen += message.decode(errors="replace") if isinstance(message, bytes) else message
    return seen


async def terminal_session(hub_url: str, ws_id: str, token: str) -> None:
    """The shared scenario: size from the query, output, resize, exit status on close."""
    async with open_terminal(hub_url, ws_id, token, query="?cols=100&rows=30") as ws:
        await ws.send("stty size; echo mark-$((6*7))\r")
        assert "30 100" in await read_until(ws, "mark-42")
        await ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        await ws.send(b"stty size; echo again-$((1+1))\r")
        assert "40 120" in await read_until(ws, "again-2")
        await ws.send(json.dumps({"type": "input", "data": "exit 3\r"}))
        exit_message = None
        with anyio.fail_after(10):
            try:
                while True:
                    message = await ws.recv()
                    if isinstance(message, str) and message.startswith('{"type":"exit"'):
                        exit_message = json.loads(message)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1000, "exit 3")
    assert exit_message == {"type": "exit", "exit_code": 3}


async def terminal_refusals(hub_url: str, ws_id: str, owner: str, other: str, stopped_id: str) -> None:
    """Other users, foreign origins (riding on the cookie), stopped workspaces and anonymous callers are refused
    before the upgrade."""
    cases = [
        (ws_id, other, None, 404),
        (ws_id, owner, "https://evil.example", 403),
        (stopped_id, owner, None, 409),
        ("nosuchworkspace1", owner, None, 404),
        (ws_id, "chub_invalid", None, 401),
    ]
    for target, token, origin, status in cases:
        with pytest.raises(InvalidStatus) as info:
            async with open_terminal(hub_url, target, token, origin=origin, cookie=origin is not None):
                pass
        assert info.value.response.status_code == status, (target, origin)
