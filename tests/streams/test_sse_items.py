"""SSE framing of streams that do not come from the hub (exec output, a direct log follow), without HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from app.streams.events.sse import item_stream, wants_event_stream

pytestmark = pytest.mark.anyio


def frames_of(chunk: bytes) -> list[tuple[str, Any]]:
    """``(event, data)`` of each frame in a chunk."""
    out = []
    for block in chunk.split(b"\n\n")[:-1]:
        event, data = block.decode().split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_retry_first_then_pending_items_in_one_chunk_and_the_end() -> None:
    ready = anyio.Event()

    async def items() -> AsyncIterator[tuple[str, Any]]:
        await ready.wait()
        for i in range(3):
            yield "exec.output", {"i": i, "text": "é"}

    async with anyio.create_task_group() as tg:
        stream = item_stream(tg, items(), heartbeat=10, retry_ms=1500)
        assert await anext(stream) == b"retry: 1500\n\n"
        reading = anext(stream)
        ready.set()
        await anyio.sleep(0.05)  # all three are pending by the time the reader looks
        assert frames_of(await reading) == [("exec.output", {"i": i, "text": "é"}) for i in range(3)]
        assert [chunk async for chunk in stream] == []


async def test_pings_while_quiet_and_the_source_closes_when_the_client_leaves() -> None:
    closed = anyio.Event()

    async def items() -> AsyncIterator[tuple[str, Any]]:
        try:
            await anyio.sleep_forever()
            yield "never", {}
        finally:
            closed.set()

    async with anyio.create_task_group() as tg:
        stream = item_stream(tg, items(), heartbeat=0.05, retry_ms=1)
        assert await anext(stream) == b"retry: 1\n\n"
        assert await anext(stream) == b": ping\n\n"
        await stream.aclose()
        with anyio.fail_after(5):
            await closed.wait()


async def test_a_failing_source_ends_the_stream_and_spares_the_task_group() -> None:
    async def items() -> AsyncIterator[tuple[str, Any]]:
        yield "log", {"text": "one"}
        raise RuntimeError("the engine went away")

    async with anyio.create_task_group() as tg:
        chunks = [chunk async for chunk in item_stream(tg, items(), heartbeat=10, retry_ms=1)]
    assert frames_of(b"".join(chunks[1:])) == [("log", {"text": "one"})]


def test_accept_headers() -> None:
    assert wants_event_stream("text/event-stream")
    assert wants_event_stream("application/json, text/event-stream;q=0.9")
    assert not wants_event_stream(None) and not wants_event_stream("application/json")
