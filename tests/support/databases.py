"""Fresh, migrated databases for tests: a SQLite file or a new Postgres database per call."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from app import db
from tests.support.services import POSTGRES_URL, need_postgres


def admin_dsn() -> str:
    """The Postgres server's libpq DSN (for psycopg, outside SQLAlchemy)."""
    return POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_database(kind: str, tmp_dir: Path, *, migrate: bool = True) -> Iterator[str]:
    """Yield the URL of an empty database of ``kind`` (``sqlite`` or ``postgres``), migrated to head."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_dir / f'codehub-{secrets.token_hex(4)}.db'}"
        if migrate:
            db.upgrade(url)
        yield url
        return
    need_postgres()
    name = f"codehub_t_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        if migrate:
            db.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
