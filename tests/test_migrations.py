"""The full migration chain upgrades and downgrades on SQLite and Postgres, and matches the models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app import db
from app.models import Base
from tests.support.databases import fresh_database


def _sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite").replace("postgresql+psycopg", "postgresql+psycopg")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_upgrade_downgrade_full_chain(kind: str, tmp_path) -> None:
    with fresh_database(kind, tmp_path, migrate=False) as url:
        db.upgrade(url)
        engine = create_engine(_sync_url(url))
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert {"users", "api_tokens", "servers", "workspaces", "audit_events"} <= tables
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], f"models and migrations differ: {diff}"
        db.downgrade(url, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        db.upgrade(url)
        engine.dispose()


@pytest.mark.anyio
async def test_unmigrated_database_fails_fast(tmp_path) -> None:
    from app.settings import load_settings

    settings = load_settings(environ={}, data_dir=tmp_path)
    engine = db.create_engine(settings)
    with pytest.raises(db.MigrationRequired, match="codehub migrate"):
        await db.check_migrated(engine)
    await engine.dispose()


def test_concurrent_migrate_runs_are_serialized(tmp_path) -> None:
    """Two `codehub migrate` processes at once on a fresh Postgres database (several hub replicas starting
    together): the advisory lock makes them take turns, both succeed and the schema ends at head."""
    with fresh_database("postgres", tmp_path, migrate=False) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
        env.update(CODEHUB_DATA_DIR=str(tmp_path), CODEHUB_DATABASE_URL=url, CODEHUB_LOG_LEVEL="warning")
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "app", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=180)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        engine = create_engine(_sync_url(url))
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == db.head_revision()
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        engine.dispose()
