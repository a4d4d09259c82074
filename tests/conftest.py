"""Shared fixtures: the anyio backend, fresh databases on SQLite and Postgres, settings, a running hub, the test
cluster."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.databases import fresh_database
from tests.support.runtime import sweep_hubs
from tests.support.server import Hub, running_hub
from tests.support.services import SECOND_DOCKER_URL, need_kubernetes
from tests.support.settings import MADE_HUB_IDS, make_settings

os.environ.setdefault("CODEHUB_LOG_LEVEL", "warning")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Every async test and fixture runs on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _clean_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty HOME for the session: the local runtime's login shells (terminal tests) then read none of the
    developer's startup files (a pyenv rehash lock left by a killed shell made every later one wait 60 s).
    Playwright still finds the browsers installed under the real home."""
    real = Path.home()
    saved = {key: os.environ.get(key) for key in ("HOME", "PLAYWRIGHT_BROWSERS_PATH")}
    if saved["PLAYWRIGHT_BROWSERS_PATH"] is None and (real / ".cache" / "ms-playwright").is_dir():
        os.environ["PLAYWRIGHT_BROWSERS_PATH"] = str(real / ".cache" / "ms-playwright")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """The test cluster's admin kubeconfig (``CODEHUB_TEST_KUBECONFIG``); skips without the cluster unless
    ``kubernetes`` is in CODEHUB_TEST_REQUIRE, where it fails."""
    return need_kubernetes()


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


@pytest.fixture(scope="module", autouse=True)
def _sweep_module_hubs() -> Iterator[None]:
    """What the hubs made in a module left on the Docker engines goes when the module ends (a network each:
    leftovers would use up Docker's address pools in a long run)."""
    first = len(MADE_HUB_IDS)
    yield
    made = set(MADE_HUB_IDS[first:])
    if made and shutil.which("docker"):
        sweep_hubs(made, (None, SECOND_DOCKER_URL))


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub on a real uvicorn server over this module's database, with an admin token."""
    settings = make_settings(tmp_path_factory.mktemp("data"), database_url=db_url)
    async with running_hub(settings) as running:
        yield running
