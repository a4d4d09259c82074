"""Shared fixtures: the anyio backend, fresh databases on SQLite and Postgres, settings, a running hub."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.settings import Settings, load_settings
from tests.databases import fresh_database
from tests.support.server import Hub, running_hub

os.environ.setdefault("CODEHUB_LOG_LEVEL", "warning")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Every async test and fixture runs on asyncio."""
    return "asyncio"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database per test module, on SQLite and on Postgres."""
    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh migrated SQLite database of the test's own."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    """A new migrated Postgres database of the test's own (skips without Postgres)."""
    with fresh_database("postgres", tmp_path) as url:
        yield url


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: only what is given, never the developer's CODEHUB_* environment."""
    base: dict[str, object] = {
        "data_dir": data_dir,
        "log_level": "warning",
        "runtime": "local",
        "docker_url": "none",
        "hub_id": f"t-{secrets.token_hex(4)}",
        "redis_prefix": f"codehub-test-{secrets.token_hex(4)}",
        # tests poll and share tokens across a module: rate limits are tested on purpose in tests/ops only
        "api_rate_per_minute": 0,
        "login_rate_per_minute": 0,
    }
    base.update(overrides)
    return load_settings(environ={}, **base)


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub on a real uvicorn server over this module's database, with an admin token."""
    settings = make_settings(tmp_path_factory.mktemp("data"), database_url=db_url)
    async with running_hub(settings) as running:
        yield running
