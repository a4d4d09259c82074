"""Fixtures of the dashboard tests: a migrated SQLite database per module (skipped without a browser), one
headless Chromium per module, and a fresh desktop page per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import chromium, need_browser, open_page
from tests.support.databases import fresh_database


@pytest.fixture(scope="module")
def browser_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated SQLite database for the module's hub (migrations run their own event loop: a sync
    fixture); skips the module without Chromium or Playwright."""
    need_browser()
    with fresh_database("sqlite", tmp_path_factory.mktemp("ui-db")) as url:
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, launched by Playwright."""
    async with chromium() as b:
        yield b


@pytest.fixture
async def page(browser: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh desktop-sized page; uncaught page errors fail the test; a last screenshot whatever happens."""
    async with open_page(browser, shot=tmp_path / "final.png") as p:
        yield p
