"""Fixtures of the ops tests: fresh databases per test (sync fixtures: migrations run their own loop)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh migrated SQLite database."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    """A fresh migrated Postgres database (skips without Postgres)."""
    with fresh_database("postgres", tmp_path) as url:
        yield url
