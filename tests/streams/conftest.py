"""Fixtures for the event hub tests: a unique Redis prefix per test, hubs on both backends."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from app.settings import Settings, load_settings
from app.streams.events.backend import open_hub
from app.streams.events.hub import Hub
from tests.services import need_redis

HubFactory = Callable[..., AbstractAsyncContextManager[Hub]]


def hub_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a hub under test: only what is given, never the developer's environment."""
    base: dict[str, Any] = {"data_dir": data_dir, "log_level": "warning", "sse_heartbeat": 30.0}
    base.update(overrides)
    return load_settings(environ={}, **base)


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete this test's keys (never anything else)."""
    client = aredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix unique to this test; its keys are deleted afterwards."""
    url = need_redis()
    prefix = f"codehub-test-{secrets.token_hex(6)}"
    yield prefix
    await delete_prefix(url, prefix)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each contract test runs on both backends."""
    return request.param


@pytest.fixture
async def make_hub(backend: str, tmp_path: Path) -> AsyncIterator[HubFactory]:
    """Open hubs of this test's backend; with Redis, every hub of the test shares one unique prefix."""
    prefix = f"codehub-test-{secrets.token_hex(6)}"
    url = need_redis() if backend == "redis" else ""

    @asynccontextmanager
    async def factory(*, buffer: int = 1000, **overrides: Any) -> AsyncIterator[Hub]:
        values: dict[str, Any] = {"redis_url": url, "redis_prefix": prefix}
        values.update(overrides)
        async with open_hub(hub_settings(tmp_path, **values), buffer=buffer) as hub:
            yield hub

    yield factory
    if url:
        await delete_prefix(url, prefix)
