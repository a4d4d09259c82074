"""Server-Sent Events framing of hub subscriptions (no web framework here: controllers wrap the bytes).

Each yielded chunk is ready to write: a ``retry:`` hint first, then every pending frame of the subscription
in ONE chunk (with thousands of subscribers, one write per event costs more CPU than the events are worth),
``: ping`` comments as heartbeats (queued by the hub every ``sse_heartbeat`` seconds, so no timer per
stream), and a final ``stream.reset`` frame when the hub ends the stream (slow consumer, Redis down).

A frame is ``id: <id>\\nevent: <type>\\ndata: <the full event JSON>\\n\\n``; synthetic resets carry no ``id:`` so
the browser keeps its ``Last-Event-ID`` and resumes from it on reconnect.

``item_stream`` frames streams that do not come from the hub (exec output, a direct log follow) the same
way: ``retry:`` first, ``event:``/``data:`` frames without ids, pending frames in one chunk, ``: ping``
while the source is quiet, and the source closed when the client leaves.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup

from app.errors import ServiceUnavailable
from app.streams.events.direct_http import DirectWriter
from app.streams.events.fanout import HUB_UNAVAILABLE, reset_item
from app.streams.events.hub import Hub

log = logging.getLogger(__name__)

Guard = Callable[[Callable[[str], None]], AbstractAsyncContextManager[object]]
MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING_FRAME = b": ping\n\n"
ITEM_BUFFER = 64
DIRECT_BUFFER_BYTES = 1 << 20  # unsent bytes (beyond the kernel's socket buffer) that make a slow consumer
MAX_ITEMS_PER_CHUNK = 256


def wants_event_stream(accept: str | None) -> bool:
    """True when an ``Accept`` header asks for ``text/event-stream``."""
    return MEDIA_TYPE in (accept or "")


def frame(event: str, data: Any) -> bytes:
    """One frame without an id: ``event: <event>``, ``data: <data as JSON>``."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), msgspec.json.encode(data))


def retry_frame(retry_ms: int) -> bytes:
    """The ``retry:`` hint telling EventSource how long to wait before reconnecting."""
    return b"retry: %d\n\n" % retry_ms


async def event_stream(
    hub: Hub,
    topics: Sequence[str],
    *,
    last_event_id: str | None = None,
    since_earliest: bool = False,
    retry_ms: int = 2000,
    direct: DirectWriter | None = None,
    guard: Guard | None = None,
) -> AsyncIterator[bytes]:
    """The body of an SSE response: subscribe (inside the stream), replay, then live frames.

    Topics must already be validated and authorized. ``guard``, when given, is entered once subscribed, with
    the subscription's ``end`` for as long as the stream runs: it ends the stream (a final ``stream.reset``
    with its reason) when the subscriber loses access. With ``direct`` (the server's
    ``codehub.direct_write`` extension) live frames bypass this generator once it has caught up: the
    fan-out writes them to the socket (``app.streams.events.direct_http``); the generator resumes for the end.
    When the hub is unavailable the stream sends a ``stream.reset`` (``hub_unavailable``) and ends, so
    EventSource reconnects after ``retry_ms`` instead of giving up on an error status. The subscription
    is removed when the client disconnects (the response cancels this generator; the ``async with`` exits).
    """
    yield retry_frame(retry_ms)
    try:
        async with (
            hub.subscribe(topics, last_event_id, since_earliest) as subscription,
            guard(subscription.end) if guard is not None else _unguarded(),
        ):
            while True:
                sink = direct.sink(DIRECT_BUFFER_BYTES) if direct is not None else None
                if sink is not None and await subscription.run_direct(sink):
                    direct = None  # the hub ended the stream: what is left goes through ASGI
                if (batch := await subscription.next_batch()) is None:
                    return
                yield batch[0].frame if len(batch) == 1 else b"".join([item.frame for item in batch])
    except ServiceUnavailable:
        yield reset_item(HUB_UNAVAILABLE, list(topics)).frame


@asynccontextmanager
async def _unguarded() -> AsyncIterator[None]:
    yield


async def item_stream(
    tasks: TaskGroup, items: AsyncIterator[tuple[str, Any]], *, heartbeat: float, retry_ms: int
) -> AsyncIterator[bytes]:
    """The body of an SSE response over ``(event, data)`` pairs that do not come from the hub.

    ``retry:`` first, then frames (all pending ones in one chunk), ``: ping`` every ``heartbeat`` seconds
    of silence. The source is read by a task in ``tasks`` (an async generator must not own a task
    group): when the client leaves, the response closes this generator, the task stops and closes the
    source. A source that fails ends the stream (logged); it never takes ``tasks`` down with it.
    """
    send, receive = anyio.create_memory_object_stream[tuple[str, Any]](ITEM_BUFFER)
    scope = anyio.CancelScope()

    async def pump() -> None:
        with scope:
            try:
                async with send:
                    async for item in items:
                        await send.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except Exception as exc:  # e.g. the engine went away mid-stream
                log.warning("event stream source failed: %s", getattr(exc, "code", None) or type(exc).__name__)
            finally:
                with anyio.CancelScope(shield=True):
                    await items.aclose()  # type: ignore[attr-defined]  # the sources are async generators

    tasks.start_soon(pump)
    try:
        yield retry_frame(retry_ms)
        async with receive:
            while True:
                item = None
                with anyio.move_on_after(heartbeat):
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        return
                if item is None:
                    yield PING_FRAME
                    continue
                frames = [frame(*item)]
                while len(frames) < MAX_ITEMS_PER_CHUNK:
                    try:
                        frames.append(frame(*receive.receive_nowait()))
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                yield frames[0] if len(frames) == 1 else b"".join(frames)
    finally:
        scope.cancel()
