"""Fixtures for the event hub tests: a unique Redis prefix per test, hubs on both backends."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from app.streams.events.backend import open_hub
from app.streams.events.hub import Hub
from tests.support.event_hubs import HubFactory, delete_prefix
from tests.support.services import need_redis
from tests.support.settings import hub_settings


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
