"""Rate limits: token buckets in Redis (shared by every hub process) or in this process.

``RateLimiter.hit(key, limit)`` takes one token from the bucket ``limit.name``/``key`` and returns 0.0 when
granted, else the seconds until a token is available. ``enforce`` turns a refusal into ``TooManyRequests``
(429 with ``Retry-After``). The Redis backend takes tokens with one atomic Lua script (the clock is Redis's
``TIME``, so hub processes with skewed clocks agree). When Redis does not answer, hits fall back to the
in-process buckets for ``REDIS_BACKOFF`` seconds: limits stay on, per process, rather than failing requests.

Leases: a round trip to Redis on every API request was most of the list route's CPU and its tail, so a
process takes tokens a batch at a time (a lease) and spends them locally for up to ``LEASE_SECONDS``:
- a lease starts at ``Limit.lease`` (a tenth of the burst and one second of the rate, whichever is less) and
  doubles each time one runs low within half its time, up to ``Limit.max_lease`` (a tenth of the burst),
  so a busy token makes a round trip a second rather than every tenth request; it halves again when one
  expires mostly unspent;
- the request that takes a lease of 4 or more below a quarter takes the next one while the others keep
  spending what is left (refill ahead), so requests rarely wait on Redis; those that find it empty wait
  for that one refill instead of each asking;
- what a lease leaves unspent when it expires goes back to the shared bucket with the next refill.
Every token is taken from the one shared bucket before it is spent and only unspent ones are given back,
so all processes together never admit more than the limit; tokens held by a process that goes quiet are
not given back until it asks again, which can only refuse early, never admit more. Small limits (login)
lease one token at a time, i.e. exactly.

Callers:
- login: ``login_limit(settings)`` keyed by ``username|client address`` (``app.controllers.auth``);
- general API: ``api_limit(settings)`` keyed by the token id (``app.controllers.ops``);
- AI: ``SharedAILimiter`` implements ``app.services.ai.limits.RequestLimiter`` (concurrency in-process,
  rate through this module), so ``LLMClient(settings, limiter=SharedAILimiter(...))`` shares the rate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from app import metrics
from app.errors import TooManyRequests
from app.services.ai.limits import InProcessLimiter
from app.services.singleflight import SingleFlight
from app.settings import Settings

log = logging.getLogger(__name__)

REDIS_TIMEOUT = 0.5
REDIS_BACKOFF = 5.0
LEASE_SECONDS = 1.0
LEASE_SHARE = 0.1
LEASE_AHEAD = 0.25
LEASE_AHEAD_MIN = 4
MAX_MEMORY_BUCKETS = 50_000

_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(v[1])
local at = tonumber(v[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate + tonumber(ARGV[5]))
local want = tonumber(ARGV[4])
local wait = 0
local granted = 0
if tokens >= cost then
  granted = math.max(cost, math.min(want, math.floor(tokens)))
  tokens = tokens - granted
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {tostring(granted), tostring(wait)}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket: ``per_minute`` tokens per minute refill up to ``burst``; ``per_minute <= 0`` = no limit."""

    name: str
    per_minute: float
    burst: int
    detail: str = "too many requests; retry later"
    code: str = "rate_limited"

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.per_minute / 60.0

    @property
    def enabled(self) -> bool:
        """False when this limit is switched off."""
        return self.per_minute > 0

    @property
    def lease(self) -> float:
        """Tokens a process may take from the shared bucket at once (at least one request's worth)."""
        return max(1.0, math.floor(min(self.burst * LEASE_SHARE, self.rate * LEASE_SECONDS)))

    @property
    def max_lease(self) -> float:
        """The most a lease grows to while one token is busy: a tenth of the burst."""
        return max(self.lease, math.floor(self.burst * LEASE_SHARE))


def login_limit(settings: Settings) -> Limit:
    """Login attempts per username and client address (every attempt counts, before the password hash)."""
    return Limit(
        "login",
        settings.login_rate_per_minute,
        settings.login_rate_burst,
        "too many login attempts; retry later",
        "login_rate_limited",
    )


def api_limit(settings: Settings) -> Limit:
    """Authenticated API requests per token."""
    return Limit("api", settings.api_rate_per_minute, settings.api_rate_burst, "too many API requests", "rate_limited")


def ai_limit(settings: Settings) -> Limit:
    """AI requests per user (the LLM client's rate)."""
    return Limit(
        "ai",
        settings.llm_rate_per_minute,
        settings.llm_rate_burst,
        "too many AI requests; retry later (CODEHUB_LLM_RATE_PER_MINUTE)",
        "ai_rate_limited",
    )


class RateLimiter(Protocol):
    """Takes tokens from named buckets."""

    backend: str

    async def hit(self, key: str, limit: Limit, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0.0 when granted, else the seconds to wait."""
        ...


class MemoryRateLimiter:
    """Token buckets in this process (one hub process, or the fallback while Redis is down)."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, key: str, limit: Limit, cost: float = 1.0) -> float:
        """Synchronous ``hit``."""
        if not limit.enabled:
            return 0.0
        now = self._clock()
        bucket = (limit.name, key)
        tokens, at = self._buckets.get(bucket, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + max(0.0, now - at) * limit.rate)
        if tokens >= cost:
            self._buckets[bucket] = (tokens - cost, now)
            if len(self._buckets) > MAX_MEMORY_BUCKETS:
                self._forget_full(now)
            return 0.0
        self._buckets[bucket] = (tokens, now)
        return (cost - tokens) / limit.rate

    async def hit(self, key: str, limit: Limit, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0.0 when granted, else the seconds to wait."""
        return self.take(key, limit, cost)

    def _forget_full(self, now: float) -> None:
        # Buckets idle long enough to be full again carry no information; drop them (oldest first if needed).
        for bucket, (_tokens, at) in list(self._buckets.items()):
            if now - at > 600:
                del self._buckets[bucket]
        if len(self._buckets) > MAX_MEMORY_BUCKETS:
            for bucket in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[bucket]


class _Lease:
    """Tokens of one bucket this process took from Redis: ``left`` to spend until ``until``."""

    __slots__ = ("left", "size", "taken", "until")

    def __init__(self, size: float) -> None:
        self.left = 0.0
        self.until = 0.0
        self.taken = 0.0
        self.size = size

    def spend(self, cost: float, now: float) -> bool:
        """Take ``cost`` if the lease is unexpired and holds that much."""
        if self.left < cost or self.until <= now:
            return False
        self.left -= cost
        return True

    @property
    def low(self) -> bool:
        """Time to take the next lease ahead (large leases only: small limits stay exact)."""
        return self.size >= LEASE_AHEAD_MIN and self.left < self.size * LEASE_AHEAD


class RedisRateLimiter:
    """Token buckets in Redis under ``<prefix>:rl:<limit>:<key>``, taken by an atomic script a lease at a time."""

    backend = "redis"

    def __init__(self, redis: Any, prefix: str, fallback: MemoryRateLimiter | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.fallback = fallback or MemoryRateLimiter()
        self._script = redis.register_script(_LUA)
        self._down_until = 0.0
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._refills: SingleFlight[tuple[str, str], float] = SingleFlight()

    def key(self, key: str, limit: Limit) -> str:
        """The Redis key of a bucket (long or odd keys are hashed)."""
        if len(key) > 64 or not key.isprintable():
            key = "h:" + hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}:rl:{limit.name}:{key}"

    async def hit(self, key: str, limit: Limit, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0.0 when granted, else the seconds to wait."""
        if not limit.enabled:
            return 0.0
        bucket = (limit.name, key)
        while time.monotonic() >= self._down_until:
            lease = self._leases.get(bucket)
            if lease is not None and lease.spend(cost, time.monotonic()):
                if lease.low and not self._refills.running(bucket):
                    await self._take_lease(bucket, key, limit, cost)  # ahead: this request is already admitted
                return 0.0
            wait = await self._take_lease(bucket, key, limit, cost)
            if wait is None:
                break
            if wait > 0:
                return wait
        return self.fallback.take(key, limit, cost)

    async def _take_lease(self, bucket: tuple[str, str], key: str, limit: Limit, cost: float) -> float | None:
        """One refill per bucket at a time (concurrent callers share it); None when Redis failed."""
        try:
            return await self._refills.run(bucket, lambda: self._refill(bucket, key, limit, cost))
        except Exception as exc:  # Redis down or slow: limit per process for a while instead of failing
            self._down_until = time.monotonic() + REDIS_BACKOFF
            log.warning("rate limits fall back to in-process buckets for %.0f s: %s", REDIS_BACKOFF, exc)
            return None

    async def _refill(self, bucket: tuple[str, str], key: str, limit: Limit, cost: float) -> float:
        """Lease tokens from the shared bucket (giving back what an expired lease left); 0.0 when granted,
        else the seconds until ``cost`` tokens are available."""
        now = time.monotonic()
        lease = self._leases.get(bucket)
        if lease is None:
            if len(self._leases) >= MAX_MEMORY_BUCKETS:
                self._leases.clear()  # drops held tokens: refuses early at worst
            lease = self._leases[bucket] = _Lease(limit.lease)
        returned = 0.0
        if lease.until <= now:
            returned, lease.left = lease.left, 0.0
            if returned > lease.size / 2:
                lease.size = max(limit.lease, lease.size / 2)
        elif now - lease.taken < LEASE_SECONDS / 2:
            lease.size = min(limit.max_lease, lease.size * 2)
        args = [limit.rate, limit.burst, cost, max(cost, math.floor(lease.size)), returned]
        granted, wait = await self._script(keys=[self.key(key, limit)], args=args)
        if float(granted) > 0:
            lease.left += float(granted)
            lease.taken = now
            lease.until = time.monotonic() + LEASE_SECONDS
        return float(wait)


async def enforce(limiter: RateLimiter, key: str, limit: Limit, cost: float = 1.0) -> None:
    """Take a token or raise ``TooManyRequests`` (429, ``Retry-After`` in whole seconds)."""
    wait = await limiter.hit(key, limit, cost)
    if wait > 0:
        metrics.RATE_LIMITED.labels(limit.name).inc()
        raise TooManyRequests(limit.detail, retry_after=math.ceil(wait), code=limit.code)


def create_rate_limiter(settings: Settings) -> tuple[RateLimiter, Callable[[], Any] | None]:
    """The limiter for ``settings`` (Redis when ``redis_url`` is set) and an async close function or None."""
    if not settings.redis_url:
        return MemoryRateLimiter(), None
    from redis.asyncio import Redis

    client = Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, retry_on_timeout=False
    )
    return RedisRateLimiter(client, settings.redis_prefix), client.aclose


class SharedAILimiter:
    """``RequestLimiter`` for the LLM client: concurrency per user in this process, rate through ``limiter``.

    A refused concurrency check takes no rate token. Pass it as ``LLMClient(settings, limiter=...)``.
    """

    def __init__(self, settings: Settings, limiter: RateLimiter) -> None:
        self.limit = ai_limit(settings)
        self.limiter = limiter
        self.max_concurrency = settings.llm_max_concurrency
        self._local = InProcessLimiter(max_concurrency=settings.llm_max_concurrency, rate_per_minute=0, burst=1)

    def active(self, key: str) -> int:
        """AI requests of ``key`` running in this process."""
        return self._local.active(key)

    @asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[None]:
        """Admit one AI request of ``key`` for the block, or raise ``TooManyRequests``."""
        if self._local.active(key) >= self.max_concurrency:
            metrics.RATE_LIMITED.labels("ai_concurrency").inc()
            async with self._local.acquire(key):  # raises the concurrency error of llm_limits
                yield
            return
        await enforce(self.limiter, key, self.limit)
        async with self._local.acquire(key):
            yield
