"""Rate limits: token-bucket math, the Redis script (atomic, shared), the fallback while Redis is down,
and 429 + Retry-After over HTTP for logins (per username+address) and the API (per token)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from app.errors import TooManyRequests
from app.services.auth.ratelimit import Limit, MemoryRateLimiter, RedisRateLimiter, SharedAILimiter, enforce
from app.settings import load_settings
from tests.support.server import free_port, running_hub
from tests.support.services import need_redis
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_bucket_burst_refill_and_wait() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    limit = Limit("t", per_minute=60, burst=3)
    assert [limiter.take("k", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", limit) == pytest.approx(1.0)
    assert limiter.take("other", limit) == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.take("k", limit) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("k", limit) == 0.0
    clock.now += 3600
    assert [limiter.take("k", limit) for _ in range(4)][-1] > 0  # refills only up to the burst
    assert limiter.take("k", Limit("off", per_minute=0, burst=1)) == 0.0


@pytest.fixture
async def redis_client():  # type: ignore[no-untyped-def]
    client = Redis.from_url(need_redis())
    prefix = f"codehub-test-{secrets.token_hex(4)}"
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_redis_bucket_is_shared_and_atomic(redis_client) -> None:  # type: ignore[no-untyped-def]
    client, prefix = redis_client
    one, two = RedisRateLimiter(client, prefix), RedisRateLimiter(client, prefix)  # two hub processes
    limit = Limit("t", per_minute=60, burst=4)
    assert [await one.hit("k", limit) for _ in range(2)] == [0.0, 0.0]
    assert [await two.hit("k", limit) for _ in range(2)] == [0.0, 0.0]
    wait = await one.hit("k", limit)
    assert 0.9 < wait <= 1.0
    assert await client.pttl(one.key("k", limit)) > 0  # idle buckets expire

    burst = Limit("burst", per_minute=1, burst=10)
    granted = 0

    async def hit() -> None:
        nonlocal granted
        if await one.hit("c", burst) == 0.0:
            granted += 1

    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(hit)
    assert granted == 10
    assert one.key("x" * 200, limit).startswith(f"{prefix}:rl:t:h:")


async def test_leases_spend_locally_and_never_admit_more_than_the_shared_bucket(redis_client) -> None:  # type: ignore[no-untyped-def]
    client, prefix = redis_client
    one, two = RedisRateLimiter(client, prefix), RedisRateLimiter(client, prefix)  # two hub processes
    limit = Limit("lease", per_minute=600, burst=100)  # a lease of 10; 10 tokens/s refill, counted below
    started = time.monotonic()
    assert limit.lease == 10 and limit.max_lease == 10
    assert Limit("login", per_minute=10, burst=10).lease == 1 == Limit("login", per_minute=10, burst=10).max_lease

    async def shared_tokens() -> float:
        return float(await client.hget(one.key("k", limit), "t"))

    assert await one.hit("k", limit) == 0.0
    assert await shared_tokens() == pytest.approx(90, abs=2)  # one lease taken
    assert [await one.hit("k", limit) for _ in range(6)] == [0.0] * 6
    assert await shared_tokens() == pytest.approx(90, abs=2)  # spent locally: no trip to Redis
    assert await one.hit("k", limit) == 0.0  # down to 2 of 10: this request takes the next lease ahead
    assert await shared_tokens() == pytest.approx(80, abs=2)
    assert await two.hit("k", limit) == 0.0
    assert await shared_tokens() == pytest.approx(70, abs=2)

    waits: list[float] = []

    async def hit() -> None:
        waits.append(await one.hit("k", limit))

    async with anyio.create_task_group() as tg:  # concurrent requests share refills, not a lease each
        for _ in range(30):
            tg.start_soon(hit)
    assert waits == [0.0] * 30 and await shared_tokens() >= 70 - 30 - 10 - 2

    granted = 39  # so far
    for limiter in [one, two] * 100:
        granted += await limiter.hit("k", limit) == 0.0
    refilled = (time.monotonic() - started) * limit.rate
    assert 100 <= granted <= 100 + refilled + 1  # the burst and what refilled meanwhile, never more


async def test_a_busy_token_grows_its_lease_and_gives_back_what_it_left(redis_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, prefix = redis_client
    limiter = RedisRateLimiter(client, prefix)
    limit = Limit("busy", per_minute=60, burst=10_000)  # a lease of 1 token to start, up to 1,000
    calls = 0
    script = limiter._script

    async def counted(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    monkeypatch.setattr(limiter, "_script", counted)
    assert [await limiter.hit("k", limit) for _ in range(2000)] == [0.0] * 2000
    assert calls < 20  # doubling leases: a handful of round trips, not one per request
    lease = limiter._leases[("busy", "k")]
    assert lease.size == limit.max_lease == 1000

    async def shared_tokens() -> float:
        return float(await client.hget(limiter.key("k", limit), "t"))

    held = lease.left
    before = await shared_tokens()
    assert 2000 + held + before == pytest.approx(10_000, abs=10)  # spent + held + shared = the burst (+ refill)
    lease.until = 0.0  # the lease expires: the next refill gives back what it left
    assert await limiter.hit("k", limit) == 0.0
    assert await shared_tokens() == pytest.approx(before + held - lease.left - 1, abs=10)
    assert lease.size == 500  # mostly unspent: the next lease is smaller


async def test_redis_down_falls_back_to_process_buckets() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(client, "codehub-test-down")
    limit = Limit("t", per_minute=60, burst=2)
    assert [await limiter.hit("k", limit) for _ in range(2)] == [0.0, 0.0]
    assert await limiter.hit("k", limit) > 0
    await client.aclose()


async def test_enforce_raises_429_with_retry_after() -> None:
    limiter = MemoryRateLimiter()
    limit = Limit("t", per_minute=2, burst=1, code="slow_down")
    await enforce(limiter, "k", limit)
    with pytest.raises(TooManyRequests) as info:
        await enforce(limiter, "k", limit)
    assert info.value.headers["Retry-After"] == "30" and info.value.code == "slow_down"


async def test_ai_limiter_concurrency_then_rate() -> None:
    settings = load_settings(environ={}, llm_max_concurrency=1, llm_rate_per_minute=60, llm_rate_burst=2)
    ai = SharedAILimiter(settings, MemoryRateLimiter())
    async with ai.acquire("u"):
        with pytest.raises(TooManyRequests) as info:
            async with ai.acquire("u"):
                pass
        assert info.value.code == "ai_concurrency_limit"
    async with ai.acquire("u"):
        pass
    with pytest.raises(TooManyRequests) as info:
        async with ai.acquire("u"):
            pass
    assert info.value.code == "ai_rate_limited" and int(info.value.headers["Retry-After"]) >= 1


@pytest.fixture(params=["memory", "redis"])
def limit_backend(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"redis_url": need_redis()} if request.param == "redis" else {}


async def test_login_attempts_are_limited_per_username_and_address(
    tmp_path: Path, sqlite_url: str, limit_backend: dict[str, str]
) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, login_rate_per_minute=1, login_rate_burst=3, **limit_backend
    )
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as anon:
        bad = {"username": "admin", "password": "not-the-password"}
        for _ in range(3):
            assert (await anon.post("/api/auth/login", json=bad)).status_code == 401
        r = await anon.post("/api/auth/login", json=bad)
        assert r.status_code == 429 and r.json()["error"] == "login_rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # the right password does not get through either while limited
        r = await anon.post("/api/auth/login", json={"username": "admin", "password": "admin-password-1"})
        assert r.status_code == 429
        # another username from the same address has its own bucket
        r = await anon.post("/api/auth/login", json={"username": "someone", "password": "x" * 10})
        assert r.status_code == 401
        async with hub.client() as client:
            text = (await client.get("/metrics")).text
        assert 'codehub_rate_limited_total{scope="login"}' in text


async def test_api_requests_are_limited_per_token(
    tmp_path: Path, sqlite_url: str, limit_backend: dict[str, str]
) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, api_rate_per_minute=1, api_rate_burst=5, **limit_backend
    )
    async with running_hub(settings) as hub:
        async with hub.client() as admin:
            for _ in range(5):
                assert (await admin.get("/api/workspaces")).status_code == 200
            r = await admin.get("/api/workspaces")
            assert r.status_code == 429 and r.json()["error"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1 and r.headers["x-request-id"]
            assert (await admin.get("/health")).status_code == 200  # not an API route
        other = await _second_token(hub)
        async with hub.client(other) as client:
            assert (await client.get("/api/auth/me")).status_code == 200


async def _second_token(hub) -> str:  # type: ignore[no-untyped-def]
    from app import db
    from app.services.auth.users import AuthService

    engine = db.create_engine(hub.settings)
    try:
        auth = AuthService(db.create_sessionmaker(engine), hub.settings)
        user = await auth.create_user(f"u{secrets.token_hex(3)}", "password-123", "user")
        _, raw = await auth.issue_token(user.id, name="second")
        return raw
    finally:
        await engine.dispose()
