"""Server-Sent Events framing of hub subscriptions (no web framework here: controllers wrap the bytes).

Each yielded chunk is ready to write: a ``retry:`` hint first, then every pending frame of the subscription
in ONE chunk (with thousands of subscribers, one write per event costs more CPU than the events are worth),
``: ping`` comments as heartbeats (queued by the hub every ``sse_heartbeat`` seconds, so no timer per
stream), and a final ``stream.reset`` frame when the hub ends the stream (slow consumer, Redis down).

A frame is ``id: <id>\\nevent: <type>\\ndata: <the full event JSON>\\n\\n``; synthetic resets carry no ``id:`` so
the browser keeps its ``Last-Event-ID`` and resumes from it on reconnect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from app.errors import ServiceUnavailable
from app.streams.fanout import HUB_UNAVAILABLE, Subscription, reset_item
from app.streams.hub import Hub

MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def retry_frame(retry_ms: int) -> bytes:
    """The ``retry:`` hint telling EventSource how long to wait before reconnecting."""
    return b"retry: %d\n\n" % retry_ms


async def subscription_frames(subscription: Subscription) -> AsyncIterator[bytes]:
    """SSE chunks of an open subscription: one chunk per batch of pending events, until it ends."""
    while True:
        batch = await subscription.next_batch()
        if batch is None:
            return
        if len(batch) == 1:
            yield batch[0].frame
        else:
            yield b"".join([item.frame for item in batch])


async def event_stream(
    hub: Hub,
    topics: Sequence[str],
    *,
    last_event_id: str | None = None,
    since_earliest: bool = False,
    retry_ms: int = 2000,
) -> AsyncIterator[bytes]:
    """The body of an SSE response: subscribe (inside the stream), replay, then live frames.

    Topics must already be validated and authorized. When the hub is unavailable the stream sends a
    ``stream.reset`` (``hub_unavailable``) and ends, so EventSource reconnects after ``retry_ms``
    instead of giving up on an error status. The subscription is removed when the client disconnects
    (the response cancels this generator; the ``async with`` exits).
    """
    yield retry_frame(retry_ms)
    try:
        async with hub.subscribe(topics, last_event_id, since_earliest) as subscription:
            # The loop of subscription_frames, inlined: one generator hop less per chunk.
            while (batch := await subscription.next_batch()) is not None:
                yield batch[0].frame if len(batch) == 1 else b"".join([item.frame for item in batch])
    except ServiceUnavailable:
        yield reset_item(HUB_UNAVAILABLE, list(topics)).frame
