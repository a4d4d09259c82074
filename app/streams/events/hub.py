"""The event hub: ``publish`` events to topics, ``subscribe`` to topics with replay from a cursor.

Two backends with one contract: ``InProcessHub`` (no Redis URL; one process) and ``RedisHub``
(``app.streams.events.redis_hub``; many processes). Both give ids from one counter across all topics, keep
``event_history`` events per topic for replay, and fan out locally through ``app.streams.events.fanout``.

Subscribe contract: the live buffer is registered first, then history after the cursor is replayed, then
live events follow; each id is delivered once and in order. A cursor older than a topic's retained history
(or unknown to this deployment) yields a ``stream.reset`` first, then whatever history holds.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from app.errors import BadRequest
from app.events import Event
from app.settings import Settings
from app.streams.events.fanout import (
    HISTORY_TRIMMED,
    UNKNOWN_CURSOR,
    Fanout,
    Item,
    check_topic,
    encode_body,
    parse_cursor,
    reset_item,
    topic_list,
    with_id,
)
from app.streams.events.subscription import Subscription

SUBSCRIBER_BUFFER = 1000
REPLAY_PAGE = 500
MAX_TOPICS = 32
SWEEP_EVERY = 60.0

__all__ = ["Event", "Hub", "InProcessHub", "Subscription", "subscription_topics"]


class Hub(Protocol):
    """What the app uses of a hub (both backends implement it)."""

    backend: str

    async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
        """Publish one event to ``topic`` (and ``also``); returns its id."""
        ...

    def subscribe(
        self, topics: Iterable[str], last_event_id: str | int | None = None, since_earliest: bool = False
    ) -> AbstractAsyncContextManager[Subscription]:
        """Open a subscription (replay after ``last_event_id``, then live)."""
        ...

    async def check(self) -> None:
        """Raise ``ServiceUnavailable`` when the hub cannot deliver events."""
        ...

    async def last_event(self, topic: str) -> Event | None:
        """The newest event history holds for ``topic`` (None when none)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and debugging."""
        ...


GC_GEN0_THRESHOLD = 50_000
_gc_tuned = False


def tune_gc_for_streaming() -> None:
    """Fewer garbage collections for a process holding thousands of long-lived streams.

    Every event allocates short-lived objects per subscriber (lists, dicts, futures); with the default
    gen0 threshold (2,000) many of them survive into older generations and full collections, which scan
    every connection's objects, ran ~500 times in a 5,000-subscriber bench run (5 s of pauses, up to 1 s
    each). Freezing what exists at start-up and a 50,000 gen0 threshold cut that to ~16 runs (0.4 s).
    """
    global _gc_tuned
    if _gc_tuned:  # once per process: later freezes would pin garbage of earlier apps (tests build many)
        return
    _gc_tuned = True
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), max(gen1, 20), gen2)


def subscription_topics(topics: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated topics of a subscription (1 to ``MAX_TOPICS``)."""
    names = tuple(dict.fromkeys(check_topic(t) for t in topics))
    if not names:
        raise BadRequest("subscribe to at least one topic", code="no_topics")
    if len(names) > MAX_TOPICS:
        raise BadRequest(f"at most {MAX_TOPICS} topics per subscription", code="too_many_topics")
    return names


def merge_pages(lists: Sequence[Sequence[Item]], after: int, page: int = REPLAY_PAGE) -> Iterable[list[Item]]:
    """Merge per-topic ascending item lists into pages of unique items with ids > ``after``."""
    out: list[Item] = []
    last = after
    for item in heapq.merge(*lists, key=lambda i: i.seq):
        if item.seq > last:
            last = item.seq
            out.append(item)
            if len(out) >= page:
                yield out
                out = []
    if out:
        yield out


class InProcessHub:
    """Single-process backend: a counter, a bounded deque per topic, local fan-out."""

    backend = "memory"

    def __init__(self, settings: Settings, buffer: int = SUBSCRIBER_BUFFER) -> None:
        self.fanout = Fanout(buffer)
        self._history_len = settings.event_history
        self._ttl = settings.event_ttl
        self._ids = itertools.count(1)
        self._seq = 0
        self._history: dict[str, deque[Item]] = {}
        self._trimmed: dict[str, int] = {}
        self._touched: dict[str, float] = {}
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        self._published = 0
        self._replayed = 0

    async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
        """Publish an event and return its id."""
        topics = topic_list(topic, also)
        body = encode_body(topic, type, data)
        self._seq = seq = next(self._ids)
        item = Item(seq, type, with_id(seq, body))
        now = time.monotonic()
        for name in topics:
            history = self._history.get(name)
            if history is None:
                history = self._history[name] = deque(maxlen=self._history_len)
            elif len(history) == self._history_len:
                self._trimmed[name] = history[0].seq
            history.append(item)
            self._touched[name] = now
        self._published += 1
        self.fanout.dispatch(item, topics)
        if now >= self._next_sweep:
            self._sweep(now)
        return str(seq)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_EVERY
        if not self._ttl:
            return
        for name, touched in list(self._touched.items()):
            if now - touched > self._ttl and name not in self.fanout.routes:
                history = self._history.pop(name)
                del self._touched[name]
                if history:
                    self._trimmed[name] = history[-1].seq

    @asynccontextmanager
    async def subscribe(
        self, topics: Iterable[str], last_event_id: str | int | None = None, since_earliest: bool = False
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``topics``: replay after ``last_event_id`` (or everything with ``since_earliest``)."""
        names = subscription_topics(topics)
        sub = self.fanout.add(names)
        try:
            after, resets = self._plan(names, parse_cursor(last_event_id), since_earliest)
            replay = self._replay(names, after) if after is not None else None
            subscription = Subscription(sub, resets, replay, after or 0, self._count_replayed, self.fanout.end)
            try:
                yield subscription
            finally:
                await subscription.aclose()
        finally:
            self.fanout.remove(sub)

    def _plan(self, names: tuple[str, ...], cursor: int | None, since_earliest: bool) -> tuple[int | None, list[Item]]:
        if since_earliest:
            return 0, []
        if cursor is None:
            return None, []
        if cursor < 0 or cursor > self._seq:
            return 0, [reset_item(UNKNOWN_CURSOR, names)]
        trimmed = [name for name in names if self._trimmed.get(name, 0) > cursor]
        return cursor, [reset_item(HISTORY_TRIMMED, trimmed)] if trimmed else []

    async def _replay(self, names: tuple[str, ...], after: int) -> AsyncIterator[list[Item]]:
        lists = [[i for i in self._history.get(name, ()) if i.seq > after] for name in names]
        for page in merge_pages(lists, after):
            yield page

    def _count_replayed(self, n: int) -> None:
        self._replayed += n

    async def last_event(self, topic: str) -> Event | None:
        """The newest event history holds for ``topic`` (None when none)."""
        history = self._history.get(check_topic(topic))
        return history[-1].event if history else None

    async def check(self) -> None:
        """Readiness: the in-process hub is always up."""

    def stats(self) -> dict[str, Any]:
        """Counters: subscribers, published, delivered, dropped (slow-consumer resets), replayed, …"""
        return {
            "backend": self.backend,
            "up": True,
            "published": self._published,
            "replayed": self._replayed,
            "last_id": self._seq,
            "retained_topics": len(self._history),
            **self.fanout.stats(),
        }
