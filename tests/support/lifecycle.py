"""Helpers for lifecycle tests: wait for a state, read a workspace's event history."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from tests.support.sse_client import SSEStream


async def wait_state(client: httpx.AsyncClient, workspace_id: str, states: set[str], timeout: float = 30) -> dict:
    """Poll the workspace until its state is one of ``states``; returns the body."""
    body: dict[str, Any] = {}
    with anyio.fail_after(timeout):
        while True:
            r = await client.get(f"/api/workspaces/{workspace_id}")
            r.raise_for_status()
            body = r.json()
            if body["state"] in states:
                return body
            await anyio.sleep(0.05)


async def event_history(client: httpx.AsyncClient, topic: str, until: str, timeout: float = 20) -> list[dict[str, Any]]:
    """Events of ``topic`` from the start of history until one of type ``until`` (inclusive)."""
    seen: list[dict[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    params = {"topic": topic, "since": "earliest"}
    async with client.stream("GET", "/api/events", params=params, headers=headers, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        stream = SSEStream(response)
        with anyio.fail_after(timeout):
            while True:
                frame = await stream.next(timeout)
                if frame.event is None or frame.data is None:
                    continue
                seen.append(frame.data)
                if frame.event == until:
                    return seen


def types(events: list[dict[str, Any]]) -> list[str]:
    """The event types, in order."""
    return [event["type"] for event in events]


async def create(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    """Create a workspace; returns its body."""
    r = await client.post("/api/workspaces", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return r.json()
