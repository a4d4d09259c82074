"""Direct SSE writes (``app.streams.events.direct_http``) on a real uvicorn server, byte for byte.

Under ``DirectHttpProtocol`` the fan-out writes live frames straight to the socket as HTTP/1.1 chunks; under
plain uvicorn the same frames go through ASGI. Both must give the same stream: tested here with a raw
socket that decodes the chunked body itself, so a framing slip cannot hide behind a lenient client.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from app.factory import create_app
from app.streams.events.fanout import SLOW_CONSUMER, Fanout, Item
from app.streams.events.subscription import Subscription
from tests.support.databases import fresh_database
from tests.support.server import admin_token, serve_asgi
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database (migrations run synchronously, outside the event loop)."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@asynccontextmanager
async def served(tmp_path: Path, db_url: str, http: str) -> AsyncIterator[tuple[int, Any, str]]:
    """(port, the app's context, an admin token) of a hub served with the ``http`` protocol."""
    settings = make_settings(tmp_path / "data", database_url=db_url, sse_heartbeat=0.3)
    token = await admin_token(settings)
    app = create_app(settings)
    kwargs = {} if http == "direct" else {"http": http}
    async with serve_asgi(app, **kwargs) as base:
        yield int(base.rsplit(":", 1)[1]), app.state.ctx, token


class ChunkedReader:
    """Reads an HTTP/1.1 response from a raw socket and decodes its chunked body strictly."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> None:
        data = await self.stream.receive(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            await self._fill()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def head(self) -> list[str]:
        """Status line and headers; the body must be chunked."""
        lines = (await self._until(b"\r\n\r\n")).decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK", lines[0]
        assert "transfer-encoding: chunked" in [line.lower() for line in lines]
        return lines

    async def chunk(self) -> bytes:
        """The next chunk's payload (b"" for the last chunk, whose trailer is checked)."""
        size_line = await self._until(b"\r\n")
        size = int(size_line, 16)
        payload = await self._exactly(size)
        assert await self._exactly(2) == b"\r\n", "chunk not followed by CRLF"
        return payload

    async def frames(self, n: int | None = None) -> list[str]:
        """Decoded SSE blocks until ``n`` are read (or the body ends), heartbeats included."""
        out: list[str] = []
        pending = b""
        while n is None or len(out) < n:
            payload = await self.chunk()
            if not payload:
                break
            pending += payload
            *blocks, pending = pending.split(b"\n\n")
            out.extend(block.decode() for block in blocks)
        assert n is None or not pending
        return out


async def open_events(port: int, token: str, topic: str, rcvbuf: int = 0) -> tuple[SocketStream, ChunkedReader]:
    """A raw socket with ``GET /api/events`` sent (a small receive buffer with ``rcvbuf``)."""
    sock = socket.socket()
    if rcvbuf:  # before connecting, so the TCP window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))  # loopback: immediate
    stream = await SocketStream.from_socket(sock)
    request = f"GET /api/events?topic={topic} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n\r\n"
    await stream.send(request.encode())
    return stream, ChunkedReader(stream)


def event_of(block: str) -> dict[str, Any]:
    """The JSON of an event block."""
    fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
    return json.loads(fields["data"])


async def wait_stat(ctx: Any, key: str, value: int) -> None:
    """Wait until the hub's stats show ``key == value``."""
    with anyio.fail_after(10):
        while ctx.events.stats()[key] != value:
            await anyio.sleep(0.02)


@pytest.mark.parametrize("http", ["direct", "httptools"])
async def test_replay_then_live_frames_heartbeats_and_cleanup(tmp_path: Path, db_url: str, http: str) -> None:
    async with served(tmp_path, db_url, http) as (port, ctx, token):
        base = ctx.events.stats()["subscribers"]  # internal listeners (the relay) subscribe too
        first = await ctx.events.publish("direct", "test.before", {"n": 0})
        stream, reader = await open_events(port, token, "direct")
        async with stream:
            await reader.head()
            assert (await reader.frames(1)) == ["retry: 2000"]
            await wait_stat(ctx, "subscribers", base + 1)
            assert ctx.events.stats()["direct"] == (1 if http == "direct" else 0)
            for n in range(1, 4):
                await ctx.events.publish("direct", "test.live", {"n": n})
            blocks = [block for block in await reader.frames(4) if not block.startswith(": ping")]
            while len(blocks) < 3:
                blocks += [block for block in await reader.frames(1) if not block.startswith(": ping")]
            events = [event_of(block) for block in blocks]
            assert [e["data"]["n"] for e in events] == [1, 2, 3]
            assert all(int(e["id"]) > int(first) for e in events)
            assert blocks[0] == f"id: {events[0]['id']}\nevent: test.live\ndata: " + json.dumps(
                events[0], separators=(",", ":")
            )
            pings = [block for block in await reader.frames(3) if block == ": ping"]  # heartbeats every 0.3 s
            assert pings
        await wait_stat(ctx, "subscribers", base)

        # resume with Last-Event-ID: replay through ASGI, then live (direct when offered), no gap, no repeat
        stream, reader = await open_events(port, token, f"direct&last_event_id={first}")
        async with stream:
            await reader.head()
            await ctx.events.publish("direct", "test.live", {"n": 4})
            seen: list[int] = []
            while len(seen) < 4:
                seen += [event_of(b)["data"]["n"] for b in await reader.frames(1) if b.startswith("id:")]
            assert seen == [1, 2, 3, 4]
        await wait_stat(ctx, "subscribers", base)


async def test_slow_consumer_is_reset_after_its_backlog_and_the_body_ends_cleanly(tmp_path: Path, db_url: str) -> None:
    async with served(tmp_path, db_url, "direct") as (port, ctx, token):
        base = ctx.events.stats()["subscribers"]
        stream, reader = await open_events(port, token, "slow", rcvbuf=4096)
        async with stream:
            await reader.head()
            await reader.frames(1)
            await wait_stat(ctx, "direct", 1)
            payload = "x" * 60_000
            published = 0
            with anyio.fail_after(30):  # never read: kernel buffers fill, then 1 MiB in the hub, then the reset
                while ctx.events.stats()["resets"] == 0:
                    await ctx.events.publish("slow", "test.big", {"n": published, "pad": payload})
                    published += 1
                    await anyio.sleep(0)
            await wait_stat(ctx, "subscribers", base)
            other, other_reader = await open_events(port, token, "slow")  # others are not held up meanwhile
            async with other:
                await other_reader.head()
                await other_reader.frames(1)
                await wait_stat(ctx, "subscribers", base + 1)
                await ctx.events.publish("slow", "test.small", {"n": -1})
                (block,) = [b for b in await other_reader.frames(1)]
                assert event_of(block)["data"] == {"n": -1}
            blocks = await reader.frames()  # the whole backlog, then the reset, then the end of the body
        numbers = [event_of(b)["data"]["n"] for b in blocks if b.startswith("id:")]
        assert numbers == list(range(len(numbers))) and len(numbers) >= 1
        assert blocks[-1].startswith("event: stream.reset")
        assert event_of(blocks[-1])["data"]["reason"] == SLOW_CONSUMER
        assert ctx.events.stats()["dropped"] == 1


class ListSink:
    """A sink that keeps what it is given (optionally refusing, as a slow socket would)."""

    def __init__(self, accept: bool = True) -> None:
        self.items: list[Item] = []
        self.accept = accept

    def write(self, items: list[Item]) -> bool:
        self.items.extend(items)
        return self.accept


def item(seq: int) -> Item:
    return Item(seq, "test", b'{"id":"%d"}' % seq)


async def test_direct_mode_writes_once_per_loop_iteration_skips_repeats_and_hands_back_the_rest() -> None:
    fanout = Fanout(10)
    sub = fanout.add(("t",))
    subscription = Subscription(sub, [], None, 0)
    sink = ListSink()
    outcome: list[bool] = []

    async def direct() -> None:
        outcome.append(await subscription.run_direct(sink))

    async with anyio.create_task_group() as tg:
        tg.start_soon(direct)
        while sub.sink is None:
            await anyio.sleep(0)
        for seq in (1, 2, 2, 3):  # a repeat (as recovery after a Redis reconnect may bring) is skipped
            fanout.dispatch(item(seq), ["t"])
        assert sink.items == []  # written by the flush, after this burst
        await anyio.sleep(0.01)
        assert [i.seq for i in sink.items] == [1, 2, 3] and subscription.last == 3
        fanout.dispatch(item(4), ["t"])
        fanout.end(sub, "test_end")  # before the flush: item 4 is still owed, then the reset
    assert outcome == [True]
    rest = await subscription.next_batch() or []
    if rest and rest[0].seq == 4:  # the consumer drains it, or the flush wrote it before handing back
        rest = (await subscription.next_batch() or []) if len(rest) == 1 else rest[1:]
    else:
        assert [i.seq for i in sink.items] == [1, 2, 3, 4]
    (reset,) = rest
    assert reset.type == "stream.reset" and reset.event.data["reason"] == "test_end"
    assert await subscription.next_batch() is None


async def test_a_sink_that_falls_behind_ends_its_subscriber_only() -> None:
    fanout = Fanout(10)
    slow, fast = fanout.add(("t",)), fanout.add(("t",))
    slow.sink, fast.sink = ListSink(accept=False), ListSink()
    fanout.dispatch(item(1), ["t"])
    await anyio.sleep(0.01)
    assert slow.closed and slow.end_reason == SLOW_CONSUMER and not fast.closed
    assert fanout.stats()["dropped"] == 1 and fanout.stats()["subscribers"] == 1
    fanout.dispatch(item(2), ["t"])
    await anyio.sleep(0.01)
    assert [i.seq for i in fast.sink.items] == [1, 2]  # type: ignore[union-attr]
