"""A small SSE client for tests: open a stream with httpx and read frames with timeouts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx


@dataclass
class Frame:
    """One SSE block: fields as sent (``data`` decoded from JSON when present)."""

    id: str | None = None
    event: str | None = None
    data: Any = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


def parse_frame(block: bytes) -> Frame:
    """Parse one ``\\n\\n``-terminated block."""
    frame = Frame()
    data_lines = []
    for line in block.decode().split("\n"):
        if line.startswith(":"):
            frame.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            data_lines.append(value)
        elif name == "retry":
            frame.retry = int(value)
    if data_lines:
        frame.data = json.loads("\n".join(data_lines))
    return frame


class SSEStream:
    """Frames of an open SSE response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_bytes()
        self._buffer = b""

    async def next(self, timeout: float = 10.0) -> Frame:
        """The next frame (heartbeats included); raises ``EOFError`` at the end of the stream."""
        with anyio.fail_after(timeout):
            while b"\n\n" not in self._buffer:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    raise EOFError("stream ended")
                self._buffer += chunk
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        return parse_frame(block)

    async def events(self, n: int, timeout: float = 10.0) -> list[Frame]:
        """The next ``n`` event frames (comments and retry hints skipped)."""
        out: list[Frame] = []
        while len(out) < n:
            frame = await self.next(timeout)
            if frame.event is not None:
                out.append(frame)
        return out

    async def rest(self, timeout: float = 10.0) -> list[Frame]:
        """Event frames until the server ends the stream."""
        out: list[Frame] = []
        try:
            while True:
                frame = await self.next(timeout)
                if frame.event is not None:
                    out.append(frame)
        except EOFError:
            return out


@asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient, url: str, *, last_event_id: str | None = None, **kwargs: Any
) -> AsyncIterator[SSEStream]:
    """GET ``url`` as an event stream; the response must be 200 (use ``client.get`` for error cases)."""
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    async with client.stream("GET", url, headers=headers, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{url}: {response.status_code} {response.text}")
        yield SSEStream(response)
