"""SSE framing of subscriptions, without HTTP."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from app.errors import ServiceUnavailable
from app.streams.events.sse import event_stream
from tests.support.event_hubs import HubFactory

pytestmark = pytest.mark.anyio


async def test_retry_first_then_pending_events_in_one_chunk(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        stream = event_stream(hub, ["t:a"], retry_ms=1234)
        assert await anext(stream) == b"retry: 1234\n\n"
        chunks: list[bytes] = []

        async def read() -> None:
            with anyio.fail_after(5):
                chunks.append(await anext(stream))
                while b"".join(chunks).count(b"\n\n") < 3:  # Redis: pub/sub may split them
                    chunks.append(await anext(stream))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            with anyio.fail_after(5):
                while hub.stats()["subscribers"] < 1:
                    await anyio.sleep(0.01)
            ids = [await hub.publish("t:a", "x", {"i": i}) for i in range(3)]
        await stream.aclose()
        if hub.stats()["backend"] == "memory":
            assert len(chunks) == 1  # three pending events, one chunk
        chunk = b"".join(chunks)
        frames = chunk.split(b"\n\n")[:-1]
        for frame, event_id in zip(frames, ids, strict=True):
            lines = frame.decode().split("\n")
            assert lines[:2] == [f"id: {event_id}", "event: x"]
            data = json.loads(lines[2].removeprefix("data: "))
            assert data["id"] == event_id and data["topic"] == "t:a" and data["type"] == "x"
        assert hub.stats()["subscribers"] == 0


class DownHub:
    """A hub whose Redis is gone."""

    @asynccontextmanager
    async def subscribe(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        raise ServiceUnavailable("down", code="events_unavailable")
        yield


async def test_an_unavailable_hub_yields_a_reset_without_id_and_ends() -> None:
    frames = [chunk async for chunk in event_stream(DownHub(), ["t:a"], retry_ms=10)]  # type: ignore[arg-type]
    assert frames[0] == b"retry: 10\n\n"
    head, data = frames[1].decode().split("\ndata: ")
    assert head == "event: stream.reset" and "id:" not in frames[1].decode()
    assert json.loads(data)["data"] == {"reason": "hub_unavailable", "topics": ["t:a"]}
    assert len(frames) == 2
