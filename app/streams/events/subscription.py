"""The consumer side of a hub subscription: pending resets, then replayed history, then live items.

Live items come from the subscriber's buffer in ``app.streams.events.fanout``; ``run_direct`` hands them to a sink
instead (direct SSE writes, see ``app.streams.events.direct_http``) once the subscription has caught up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

import anyio

from app.events import Event
from app.streams.events.fanout import MAX_BATCH, PING, Item, Sink, Subscriber, fresh_items, reset_item

ReplayPages = AsyncIterator[list[Item]]


class Subscription:
    """Consumer side: pending resets, then replayed history, then live items; each id delivered once."""

    def __init__(
        self,
        sub: Subscriber,
        resets: list[Item],
        replay: ReplayPages | None,
        after: int,
        on_replayed: Callable[[int], None] | None = None,
        end: Callable[[Subscriber, str], None] | None = None,
    ) -> None:
        self.topics = sub.topics
        sub.last = after
        self._sub = sub
        self._pending = resets
        self._replay = replay
        self._on_replayed = on_replayed
        self._end = end or _close_with
        self._ended = False
        self._cut = False

    async def next_batch(self, limit: int = MAX_BATCH) -> list[Item] | None:
        """Wait for the next items in id order (``PING`` included); ``None`` once the stream has ended.

        Safe to cancel: items wait in the buffer, never in flight.
        """
        if self._cut:
            return None if self._ended else self._finish()
        if self._pending:
            out, self._pending = self._pending, []
            return out
        while self._replay is not None:
            page = await anext(self._replay, None)
            if page is None:
                self._replay = None
                break
            fresh = fresh_items(self._sub, page)
            if fresh:
                if self._on_replayed:
                    self._on_replayed(len(fresh))
                return fresh
        sub = self._sub
        while not self._ended:
            if not sub.items:
                if sub.closed:
                    return self._finish()
                await sub.wait()
                continue
            batch: Iterable[Item]
            if len(sub.items) <= limit:
                batch, sub.items = sub.items, deque()
            else:
                batch = [sub.items.popleft() for _ in range(limit)]
            fresh = fresh_items(self._sub, batch)
            if fresh:
                return fresh
        return None

    @property
    def last(self) -> int:
        """The newest event id delivered so far."""
        return self._sub.last

    async def run_direct(self, sink: Sink) -> bool:
        """Hand live delivery to ``sink`` until the stream ends; False (at once) unless caught up.

        Caught up means: resets and replay delivered, nothing buffered. Items then go from the fan-out
        straight to ``sink`` (``Fanout.flush``) and this call sleeps; when the hub ends the stream it
        returns True, and ``next_batch`` delivers whatever is still buffered, then the reset.
        """
        sub = self._sub
        if self._pending or self._replay is not None or sub.items or sub.closed or self._ended:
            return False
        sub.sink = sink
        try:
            await sub.wait_closed()
        finally:
            sub.sink = None
        return True

    def end(self, reason: str) -> None:
        """End the stream now, from outside (e.g. access revoked): nothing buffered or replayed is delivered any
        more, only a final ``stream.reset`` with ``reason``."""
        self._pending, self._cut = [], True
        self._sub.items.clear()
        self._end(self._sub, reason)

    async def aclose(self) -> None:
        """Stop a replay in progress (called when the subscription's context exits)."""
        replay, self._replay = self._replay, None
        if replay is not None and hasattr(replay, "aclose"):
            with anyio.CancelScope(shield=True):
                await replay.aclose()

    def _finish(self) -> list[Item] | None:
        self._ended = True
        reason = self._sub.end_reason
        if reason is None:
            return None
        return [reset_item(reason, self.topics)]

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Iterate events (heartbeats skipped); a final ``stream.reset`` is yielded when the hub ended us."""
        while True:
            batch = await self.next_batch()
            if batch is None:
                return
            for item in batch:
                if item is not PING:
                    yield item.event


def _close_with(sub: Subscriber, reason: str) -> None:
    if sub.end_reason is None:
        sub.end_reason = reason
    sub.close()
