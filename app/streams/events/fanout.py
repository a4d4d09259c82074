"""Local fan-out shared by both hub backends: routing, bounded per-subscriber buffers, direct sinks.

A process receives each event once (from its own publish, or from Redis pub/sub) as an ``Item`` and hands
the same object to every local subscriber of its topics through a bounded per-subscriber buffer.
The JSON and the SSE frame of an item are encoded once, however many subscribers it reaches.

The buffer is a deque plus one waiter future rather than an anyio memory object stream: at 5,000
subscribers x 50 events/s the whole hub has a few microseconds per delivery, and a memory stream
``receive()`` (a checkpoint, an Event and task lookups per call) measured ~30 us per delivery against ~6 us
for this buffer, same machine and load. Items never travel through the future, so cancelling a waiting
consumer cannot lose one. A subscriber in direct mode (a ``Sink``, see ``app.streams.events.direct_http``) wakes no
consumer at all: ``Fanout.flush`` writes its items once per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import anyio
import msgspec

from app.errors import BadRequest
from app.events import Event, now_iso

RESET = "stream.reset"
SLOW_CONSUMER = "slow_consumer"
HUB_UNAVAILABLE = "hub_unavailable"
HISTORY_TRIMMED = "history_trimmed"
UNKNOWN_CURSOR = "unknown_cursor"
ACCESS_REVOKED = "access_revoked"

TOPIC_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,200}")
TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
MAX_BATCH = 512

_decode_event = msgspec.json.Decoder(Event).decode
_encode = msgspec.json.encode


class Item:
    """One event as it travels inside a process: its sequence number, type, JSON and SSE frame.

    The frame is built once here (no ``id:`` line for synthetic events such as resets): every SSE
    subscriber writes the same bytes.
    """

    __slots__ = ("_chunk", "_event", "frame", "raw", "seq", "type")

    def __init__(self, seq: int, type: str, raw: bytes, event: Event | None = None) -> None:
        self.seq = seq
        self.type = type
        self.raw = raw
        self._event = event
        head = b"id: %d\nevent: %s\ndata: " % (seq, type.encode()) if seq else b"event: %s\ndata: " % type.encode()
        self.frame = head + raw + b"\n\n"
        self._chunk: bytes | None = None

    @property
    def chunk(self) -> bytes:
        """The frame as one HTTP/1.1 chunk, for direct writes (built on first use: history keeps items)."""
        if self._chunk is None:
            self._chunk = b"%x\r\n%s\r\n" % (len(self.frame), self.frame)
        return self._chunk

    @property
    def event(self) -> Event:
        """The decoded event (decoded once, shared by every subscriber)."""
        if self._event is None:
            self._event = _decode_event(self.raw)
        return self._event


class _Ping(Item):
    __slots__ = ()

    def __init__(self) -> None:
        self.seq = 0
        self.type = "ping"
        self.raw = b""
        self._event = None
        self.frame = b": ping\n\n"
        self._chunk = None


PING = _Ping()


def encode_body(topic: str, type: str, data: dict[str, Any], at: str | None = None) -> bytes:
    """JSON of an event without its id, starting with ``{"topic":``; the hub prepends the id."""
    check_topic(topic)
    if not TYPE_RE.fullmatch(type):
        raise BadRequest(f"invalid event type {type!r}", code="bad_event_type")
    if not isinstance(data, dict):
        raise TypeError("event data must be a dict")
    return _encode({"topic": topic, "type": type, "at": at or now_iso(), "data": data})


def with_id(seq: int, body: bytes) -> bytes:
    """Full event JSON from an id and ``encode_body`` output (same bytes the Redis script builds)."""
    return b'{"id":"%d",' % seq + body[1:]


def check_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic name, else raise ``BadRequest``."""
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise BadRequest(f"invalid topic {topic!r}", code="bad_topic")
    return topic


def topic_list(topic: str, also: Iterable[str] = ()) -> list[str]:
    """Primary topic first, then the others, without repeats, all validated."""
    out = [check_topic(topic)]
    for extra in also:
        if extra not in out:
            out.append(check_topic(extra))
    return out


def parse_cursor(last_event_id: str | int | None) -> int | None:
    """A ``Last-Event-ID`` as an int; ``None`` when absent; ``-1`` when it is not one of our ids."""
    if last_event_id is None or last_event_id == "":
        return None
    if isinstance(last_event_id, int):
        return last_event_id if last_event_id >= 0 else -1
    text = last_event_id.strip()
    return int(text) if text.isdecimal() and len(text) < 20 else -1


def reset_item(reason: str, topics: Sequence[str], **extra: Any) -> Item:
    """A synthetic ``stream.reset`` event: no id, tells the client to refetch state."""
    event = Event(
        "", topics[0] if topics else "", RESET, now_iso(), {"reason": reason, "topics": list(topics), **extra}
    )
    return Item(0, RESET, _encode(event), event)


class Sink(Protocol):
    """Where a subscriber's items go when its consumer does not wake per item (see ``Fanout.flush``)."""

    def write(self, items: list[Item]) -> bool:
        """Write ``items`` now; False when the consumer has fallen too far behind (slow consumer)."""
        ...


class Subscriber:
    """The fan-out side of one subscription: its topics and a bounded buffer with one waiting consumer.

    With a ``sink`` set (direct mode) the consumer task sleeps until the stream ends, and the fan-out
    writes the items itself, once per event-loop iteration, all of a subscriber's pending items in one write.
    """

    __slots__ = ("closed", "dirty", "end_reason", "items", "last", "limit", "sink", "topics", "waiter")

    def __init__(self, topics: tuple[str, ...], limit: int) -> None:
        self.topics = topics
        self.limit = limit
        self.items: deque[Item] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.end_reason: str | None = None
        self.last = 0  # the newest id delivered (ids at or below it are duplicates)
        self.sink: Sink | None = None
        self.dirty = False

    def offer(self, item: Item) -> bool:
        """Queue ``item`` without waiting; False when the buffer is full (or closed)."""
        if self.closed or len(self.items) >= self.limit:
            return False
        self.items.append(item)
        self._wake()
        return True

    def close(self) -> None:
        """No more items; the consumer drains what is queued, then sees the end."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Sleep until an item is queued or the buffer is closed (returns at once if either holds)."""
        if self.items or self.closed:
            return
        await self._sleep()

    async def wait_closed(self) -> None:
        """Sleep until the buffer is closed (direct mode: items do not wake the consumer)."""
        while not self.closed:
            await self._sleep()

    async def _sleep(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        try:
            await waiter
        finally:
            if self.waiter is waiter:
                self.waiter = None


def fresh_items(sub: Subscriber, items: Iterable[Item]) -> list[Item]:
    """``items`` newer than what ``sub`` has delivered (heartbeats always), advancing its cursor."""
    last = sub.last
    out = []
    for item in items:
        if item.seq > last:
            last = item.seq
            out.append(item)
        elif item is PING:
            out.append(item)
    sub.last = last
    return out


class Fanout:
    """Routes items to local subscribers; a full buffer ends that subscriber with a reset, never blocks."""

    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        self.routes: dict[str, set[Subscriber]] = {}
        self.subscribers: set[Subscriber] = set()
        self.counters = {"received": 0, "delivered": 0, "dropped": 0, "resets": 0, "subscribed": 0}
        self._dirty: list[Subscriber] = []
        self._flush_scheduled = False

    def add(self, topics: tuple[str, ...]) -> Subscriber:
        """Register a subscriber; from now on it receives every item of its topics."""
        sub = Subscriber(topics, self.buffer)
        self.subscribers.add(sub)
        for topic in topics:
            self.routes.setdefault(topic, set()).add(sub)
        self.counters["subscribed"] += 1
        return sub

    def remove(self, sub: Subscriber) -> None:
        """Unregister a subscriber and close its buffer (idempotent)."""
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            for topic in sub.topics:
                subs = self.routes.get(topic)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self.routes[topic]
        sub.items.clear()
        sub.close()

    def end(self, sub: Subscriber, reason: str) -> None:
        """Stop routing to ``sub``; it drains what it holds, then gets a ``stream.reset`` (reason)."""
        if sub.end_reason is None:
            sub.end_reason = reason
            self.counters["resets"] += 1
        self.subscribers.discard(sub)
        for topic in sub.topics:
            subs = self.routes.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.routes[topic]
        sub.close()

    def end_all(self, reason: str, topics: Iterable[str] | None = None) -> int:
        """End every subscriber (or those of ``topics``) with a reset; returns how many."""
        if topics is None:
            victims = set(self.subscribers)
        else:
            victims = {sub for topic in topics for sub in self.routes.get(topic, ())}
        for sub in victims:
            self.end(sub, reason)
        return len(victims)

    def close_all(self) -> None:
        """End every subscription without a reset (hub shutdown: clients resume elsewhere)."""
        for sub in list(self.subscribers):
            self.remove(sub)

    def dispatch(self, item: Item, topics: Sequence[str]) -> None:
        """Hand ``item`` to each subscriber of any of ``topics`` once."""
        self.counters["received"] += 1
        routes = self.routes
        if len(topics) == 1:
            subs = routes.get(topics[0])
            if not subs:
                return
        else:
            found = [routes[t] for t in topics if t in routes]
            if not found:
                return
            subs = found[0] if len(found) == 1 else set().union(*found)
        slow: list[Subscriber] | None = None
        sent = 0
        for sub in subs:  # Subscriber.offer, inlined: this loop runs once per event per subscriber
            items = sub.items
            if sub.sink is not None:
                items.append(item)
                sent += 1
                if not sub.dirty:
                    sub.dirty = True
                    self._dirty.append(sub)
            elif len(items) < sub.limit and not sub.closed:
                items.append(item)
                sent += 1
                waiter = sub.waiter
                if waiter is not None:
                    sub.waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
            elif not sub.closed:
                slow = slow or []
                slow.append(sub)
        self.counters["delivered"] += sent
        if self._dirty:
            self._schedule_flush()
        if slow:
            self._end_slow(slow)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the pending items of every direct-mode subscriber, each subscriber's in one write.

        Scheduled once per event-loop iteration by ``dispatch``: events that arrive together (a burst, or
        a backlog after the loop was busy) reach each socket as one write, and no consumer task wakes.
        """
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        slow: list[Subscriber] | None = None
        for sub in dirty:
            sub.dirty = False
            sink = sub.sink
            if sink is None or not sub.items:  # left direct mode: its consumer drains the buffer
                continue
            items, sub.items = sub.items, deque()
            fresh = fresh_items(sub, items)
            if fresh and not sink.write(fresh):
                slow = slow or []
                slow.append(sub)
        if slow:
            self._end_slow(slow)

    def _end_slow(self, slow: list[Subscriber]) -> None:
        self.counters["dropped"] += len(slow)
        for sub in slow:
            self.end(sub, SLOW_CONSUMER)

    def ping_all(self) -> None:
        """Queue a heartbeat for every subscriber that has room (busy ones need none)."""
        for sub in self.subscribers:
            if sub.sink is None:
                sub.offer(PING)
            elif not sub.items:  # direct mode: pending items already show the client we are alive
                sub.items.append(PING)
                if not sub.dirty:
                    sub.dirty = True
                    self._dirty.append(sub)
        if self._dirty:
            self._schedule_flush()

    async def heartbeats(self, interval: float) -> None:
        """Ping all subscribers every ``interval`` seconds, forever (run in the hub's task group)."""
        while True:
            await anyio.sleep(interval)
            self.ping_all()

    def stats(self) -> dict[str, int]:
        """Counters of this process's fan-out (``direct``: subscribers whose frames it writes itself)."""
        direct = sum(1 for sub in self.subscribers if sub.sink is not None)
        return {"subscribers": len(self.subscribers), "direct": direct, "topics": len(self.routes), **self.counters}
