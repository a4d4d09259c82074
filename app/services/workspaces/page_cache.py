"""In-process cache of encoded workspace-list pages, invalidated per owner by a generation counter.

A page is stored with the owner's generation read BEFORE its query ran; any write bumps the generation
after its commit, so a page that might predate the write is never served again. Writes in this process
bump synchronously (read-your-writes for the caller); writes in other hub processes arrive as lifecycle
events on the ``admin`` topic (``follow_events``); a short TTL bounds what publishes no event
(``last_activity_at``, heartbeats, a lost event).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import Any

import anyio

from app.events import ADMIN_TOPIC

log = logging.getLogger(__name__)

EVERYONE = -1  # the generation key of admins' ``all=true`` pages: bumped by every write
MAX_BYTES = 32 * 1024 * 1024  # all pages together; the cache starts over beyond that


class PageCache:
    """Encoded pages keyed by the caller's query; ``ttl`` seconds at most, ``ttl <= 0`` disables it."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._generations: dict[int, int] = {}
        self._pages: dict[Hashable, tuple[float, int, bytes]] = {}
        self._bytes = 0

    def generation(self, owner: int) -> int:
        """The owner's current generation (``EVERYONE`` for pages across all owners); read it before querying."""
        return self._generations.get(owner, 0)

    def get(self, key: Hashable, owner: int) -> bytes | None:
        """The page stored under ``key`` if still fresh and no write of ``owner`` happened since its query."""
        entry = self._pages.get(key)
        if entry is None or entry[1] != self._generations.get(owner, 0):
            return None
        return entry[2] if entry[0] >= time.monotonic() else None

    def expired(self, key: Hashable, owner: int) -> bytes | None:
        """The page under ``key`` even past its TTL, as long as no write of ``owner`` happened since its query:
        served while one request refreshes it (the TTL only bounds changes that publish no event)."""
        entry = self._pages.get(key)
        return entry[2] if entry is not None and entry[1] == self._generations.get(owner, 0) else None

    def put(self, key: Hashable, generation: int, body: bytes) -> None:
        """Store a page computed after reading ``generation``."""
        if self.ttl <= 0:
            return
        old = self._pages.get(key)
        self._bytes += len(body) - (len(old[2]) if old is not None else 0)
        if self._bytes > MAX_BYTES:
            self.clear()
            self._bytes = len(body)
        self._pages[key] = (time.monotonic() + self.ttl, generation, body)

    def changed(self, owner: int) -> None:
        """A workspace of ``owner`` changed (call after the commit): their pages and everyone-pages are stale."""
        self._generations[owner] = self._generations.get(owner, 0) + 1
        self._generations[EVERYONE] = self._generations.get(EVERYONE, 0) + 1

    def clear(self) -> None:
        """Forget every page (the event stream was interrupted: changes may have been missed)."""
        self._pages.clear()
        self._bytes = 0

    async def follow_events(self, events: Any) -> None:
        """Apply lifecycle events of every hub process (``admin`` topic) forever; run it in the app's tasks."""
        while True:
            try:
                async with events.subscribe([ADMIN_TOPIC]) as subscription:
                    self.clear()
                    while True:
                        batch = await subscription.next_batch()
                        if batch is None:
                            break
                        for item in batch:
                            self._on_event(item)
            except Exception as exc:  # the hub is down: the TTL still bounds staleness
                log.warning("workspace page cache lost the lifecycle events (%s); retrying", exc)
            self.clear()
            await anyio.sleep(2.0)

    def _on_event(self, item: Any) -> None:
        if item.type == "stream.reset":
            self.clear()
        elif item.type.startswith("workspace."):
            owner = item.event.data.get("owner_id")
            if isinstance(owner, int):
                self.changed(owner)
