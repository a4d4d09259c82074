"""A small cache-aside store for workspace resource status (Docker's stats call samples for ~1-2 s).

Redis when configured (shared by every hub process, so a drop on lifecycle change is seen by all),
in-process otherwise. Values are ``ResourceStatus`` structs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from app.services.runtime.base import ResourceStatus

DEFAULT_TTL = 3.0


class StatusCache(Protocol):
    """Get / set / drop of one status per workspace."""

    async def get(self, workspace_id: str) -> ResourceStatus | None:
        """The cached status, or None when absent or expired."""
        ...

    async def set(self, workspace_id: str, status: ResourceStatus, ttl: float) -> None:
        """Store a status for ``ttl`` seconds."""
        ...

    async def drop(self, workspace_id: str) -> None:
        """Forget the status (call on every lifecycle change)."""
        ...


class MemoryStatusCache:
    """In-process cache with expiry; bounded so a long-lived hub does not grow."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._items: dict[str, tuple[float, ResourceStatus]] = {}
        self._max = max_entries

    async def get(self, workspace_id: str) -> ResourceStatus | None:
        """The cached status, or None."""
        item = self._items.get(workspace_id)
        if item is None or item[0] < time.monotonic():
            self._items.pop(workspace_id, None)
            return None
        return item[1]

    async def set(self, workspace_id: str, status: ResourceStatus, ttl: float) -> None:
        """Store with expiry; evicts expired entries (then the oldest) when full."""
        if len(self._items) >= self._max:
            now = time.monotonic()
            for key in [k for k, (exp, _) in self._items.items() if exp < now]:
                del self._items[key]
            while len(self._items) >= self._max:
                del self._items[next(iter(self._items))]
        self._items[workspace_id] = (time.monotonic() + ttl, status)

    async def drop(self, workspace_id: str) -> None:
        """Forget the status."""
        self._items.pop(workspace_id, None)


class RedisStatusCache:
    """Redis-backed cache: ``<prefix>:status:<workspace id>`` with a millisecond TTL."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, workspace_id: str) -> str:
        return f"{self._prefix}:status:{workspace_id}"

    async def get(self, workspace_id: str) -> ResourceStatus | None:
        """The cached status, or None."""
        raw = await self._redis.get(self._key(workspace_id))
        return msgspec.json.decode(raw, type=ResourceStatus) if raw else None

    async def set(self, workspace_id: str, status: ResourceStatus, ttl: float) -> None:
        """Store with a TTL."""
        await self._redis.set(self._key(workspace_id), msgspec.json.encode(status), px=max(1, int(ttl * 1000)))

    async def drop(self, workspace_id: str) -> None:
        """Forget the status."""
        await self._redis.delete(self._key(workspace_id))


async def cached_status(
    cache: StatusCache | None, workspace_id: str, ttl: float, load: Callable[[], Awaitable[ResourceStatus]]
) -> ResourceStatus:
    """Cache-aside: the cached status if fresh, else ``load()`` stored for ``ttl`` seconds."""
    if cache is None:
        return await load()
    hit = await cache.get(workspace_id)
    if hit is not None:
        return hit
    status = await load()
    await cache.set(workspace_id, status, ttl)
    return status
