"""Who owns an AI request: decides who may follow the ``ai:<request id>`` topic.

Ownership lives where the request's events live and for as long: in Redis with the events' TTL when the
hub runs on Redis (every hub process sees it), else in this process (the in-process hub's events vanish
with it too). Only the owner, or an admin, may subscribe.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

from app.errors import NotFound
from app.services.auth.access import Principal

DEFAULT_TTL = 7 * 24 * 3600.0
MEMORY_CAP = 100_000


class AIOwners(Protocol):
    """Records and answers who started an AI request."""

    async def remember(self, request_id: str, user_id: int) -> None:
        """Record that ``user_id`` started ``request_id``."""
        ...

    async def owner(self, request_id: str) -> int | None:
        """The user who started ``request_id``, or None when unknown (or expired)."""
        ...


async def authorize_follower(owners: AIOwners, principal: Principal, request_id: str) -> None:
    """404 unless ``principal`` started ``request_id`` (admins may follow any)."""
    if principal.is_admin:
        return
    if await owners.owner(request_id) != principal.user_id:
        raise NotFound(f"no AI request {request_id!r}", code="ai_request_not_found")


class MemoryAIOwners:
    """In-process ownership with a TTL and a size cap (oldest forgotten first)."""

    def __init__(self, ttl: float = DEFAULT_TTL, cap: int = MEMORY_CAP) -> None:
        self.ttl = ttl or DEFAULT_TTL
        self.cap = cap
        self._owners: OrderedDict[str, tuple[int, float]] = OrderedDict()

    async def remember(self, request_id: str, user_id: int) -> None:
        """Record the owner; drop expired or excess entries."""
        now = time.monotonic()
        self._owners[request_id] = (user_id, now + self.ttl)
        while self._owners:
            oldest = next(iter(self._owners.values()))
            if len(self._owners) <= self.cap and oldest[1] > now:
                break
            self._owners.popitem(last=False)

    async def owner(self, request_id: str) -> int | None:
        """The owner while the entry lives."""
        entry = self._owners.get(request_id)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]


class RedisAIOwners:
    """Ownership in Redis (``<prefix>:ai:owner:<id>``) with the events' TTL."""

    def __init__(self, redis: Any, prefix: str, ttl: float = DEFAULT_TTL) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = int(ttl or DEFAULT_TTL)

    def _key(self, request_id: str) -> str:
        return f"{self.prefix}:ai:owner:{request_id}"

    async def remember(self, request_id: str, user_id: int) -> None:
        """SET with expiry."""
        await self.redis.set(self._key(request_id), str(user_id), ex=self.ttl)

    async def owner(self, request_id: str) -> int | None:
        """GET; None when missing."""
        value = await self.redis.get(self._key(request_id))
        return int(value) if value is not None else None
