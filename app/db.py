"""Database engine, sessions, and the migration check that guards ``serve``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Executable, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

SessionMaker = async_sessionmaker[AsyncSession]
PING_IDLE_AFTER = 10.0
# Key of the Postgres advisory lock that serializes ``codehub migrate`` across hub replicas ("codehub" in hex).
MIGRATION_LOCK_KEY = 0x636F6465687562


class MigrationRequired(RuntimeError):
    """The database is not at the newest migration."""


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL mode, foreign keys and a busy timeout."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # No overflow: under sustained concurrency, overflow connections are closed at checkin and reopened (a
    # Postgres backend fork each, measured: 117 -> 660 req/s on the list bench); requests queue for one of 20.
    engine = create_async_engine(url, pool_size=20, max_overflow=0)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling without a round trip per checkout: ping only connections that sat idle
    for ``PING_IDLE_AFTER`` seconds (``pool_pre_ping`` pings every checkout, doubling the round trips of a
    one-query request). A connection that fails its ping is replaced; one that died while busy raises once and
    SQLAlchemy invalidates the pool."""
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine.pool, "connect")
    def _connected(_dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _checked_in(_dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_IDLE_AFTER:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    """Session factory; objects stay usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    """Alembic configuration pointing at ``migrations/`` and the given database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """On Postgres, hold a session advisory lock (on a connection of its own) so that concurrent migration runs
    of several hub replicas take turns: the later ones find the schema at head and do nothing. A no-op on SQLite.
    The lock goes away with the connection, so a crashed run never leaves it held."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        yield
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run migrations up to ``revision`` under ``migration_lock`` (blocking; call from a thread in async code)."""
    with migration_lock(database_url):
        command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Run migrations down to ``revision`` under ``migration_lock`` (blocking)."""
    with migration_lock(database_url):
        command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    """The newest revision in ``migrations/``."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise ``MigrationRequired`` with the command to run when the schema is not at head."""

    def current(sync_conn: Connection) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with engine.connect() as conn:
        revision = await conn.run_sync(current)
    head = head_revision()
    if revision != head:
        state = "empty" if revision is None else f"at revision {revision}"
        raise MigrationRequired(
            f"the database is {state}, the code expects {head}: run `codehub migrate` (or `just migrate`)"
        )


async def deployment_hub_id(engine: AsyncEngine) -> str:
    """The hub id created with this deployment's database at its first migrate."""
    async with engine.connect() as conn:
        value = (await conn.execute(text("SELECT hub_id FROM deployment WHERE id = 1"))).scalar_one_or_none()
    if not value:
        raise MigrationRequired("the database has no deployment row: run `codehub migrate` (or `just migrate`)")
    return str(value)


async def ping(engine: AsyncEngine) -> None:
    """Round-trip a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def upsert(
    session: AsyncSession, model: type[DeclarativeBase], values: dict[str, Any], *, keep: tuple[str, ...] = ()
) -> Executable:
    """``INSERT … ON CONFLICT (primary key) DO UPDATE`` of ``values`` but ``keep`` (SQLite and Postgres), returning
    the row: one statement, so concurrent writers of one row neither collide on the insert nor update a row
    deleted meanwhile."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    keys = [column.name for column in model.__table__.primary_key]
    statement = insert(model).values(**values)
    changed = {name: statement.excluded[name] for name in values if name not in keys and name not in keep}
    return statement.on_conflict_do_update(index_elements=keys, set_=changed).returning(model)
