"""Per-user limits on AI requests: concurrent requests and a token-bucket rate.

The LLM client depends only on ``RequestLimiter``; ``InProcessLimiter`` counts in this process. A
Redis-backed limiter (shared by every hub process) can implement the same one method later.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from app.errors import TooManyRequests


class RequestLimiter(Protocol):
    """Admits one request of ``key`` for the duration of the block, or raises ``TooManyRequests``."""

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]: ...


class TokenBucket:
    """Token buckets per key: ``rate`` tokens per second refill up to ``burst``; full buckets are forgotten."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take one token; return 0 when granted, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        for key, (_tokens, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[key]


class InProcessLimiter:
    """Concurrency and rate limits per key, counted in this process."""

    def __init__(
        self, *, max_concurrency: int, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_concurrency = max_concurrency
        self._bucket = TokenBucket(rate_per_minute / 60.0, burst, clock)
        self._active: dict[str, int] = {}

    def active(self, key: str) -> int:
        """Requests of ``key`` running now."""
        return self._active.get(key, 0)

    @asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[None]:
        """Admit one request of ``key`` or raise ``TooManyRequests`` (with the seconds to wait)."""
        if self._active.get(key, 0) >= self.max_concurrency:
            raise TooManyRequests(
                f"at most {self.max_concurrency} AI requests may run at once per user (CODEHUB_LLM_MAX_CONCURRENCY)",
                retry_after=1,
                code="ai_concurrency_limit",
            )
        wait = self._bucket.take(key)
        if wait > 0:
            raise TooManyRequests(
                "too many AI requests; retry later (CODEHUB_LLM_RATE_PER_MINUTE)",
                retry_after=wait,
                code="ai_rate_limited",
            )
        self._active[key] = self._active.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._active[key] - 1
            if left:
                self._active[key] = left
            else:
                del self._active[key]
