"""Hash-chained audit log: what happened, by whom, with hashes and sizes, never content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker
from app.errors import BadRequest, DomainError
from app.models import AuditEvent, utcnow

GENESIS = "0" * 64
_ADVISORY_KEY = 0x636F6465687562  # "codehub"


def sha256_hex(data: bytes | str) -> str:
    """Hex sha256 of bytes or UTF-8 text."""
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class AuditEntry:
    """One mutation to record. ``sha256``/``size`` describe content that is itself never stored."""

    action: str
    actor_id: int | None = None
    actor_name: str | None = None
    workspace_id: str | None = None
    target: str | None = None
    sha256: str | None = None
    size: int | None = None
    outcome: str = "ok"
    request_id: str | None = None
    client_addr: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _canonical(row: AuditEvent) -> bytes:
    at = row.at.astimezone(UTC) if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    body = {
        "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor_id": row.actor_id,
        "actor_name": row.actor_name,
        "action": row.action,
        "workspace_id": row.workspace_id,
        "target": row.target,
        "sha256": row.sha256,
        "size": row.size,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "client_addr": row.client_addr,
        "details": row.details or {},
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def chain_hash(prev_hash: str, row: AuditEvent) -> str:
    """The hash a row must carry: sha256 over the previous hash and the row's canonical JSON."""
    return hashlib.sha256(prev_hash.encode() + _canonical(row)).hexdigest()


class AuditLog:
    """Appends hash-chained audit rows, one short transaction each, serialized across processes."""

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sessionmaker = sessionmaker
        self._lock = anyio.Lock()

    async def record(self, entry: AuditEntry) -> AuditEvent:
        """Append ``entry`` to the chain and return the stored row."""
        async with self.appending(), self._sessionmaker() as session:
            return await self.commit_with(session, entry)

    @asynccontextmanager
    async def appending(self) -> AsyncIterator[None]:
        """Hold the chain's lock for a transaction that ends in ``commit_with``; enter it BEFORE the transaction's
        first statement. A transaction that waited for the lock after one would hold a pooled connection (and on
        SQLite the write lock) that the lock's holder may be waiting for: a burst of such waiters exhausts the
        pool, and one is enough to stall an append on SQLite until its busy timeout."""
        async with self._lock:
            yield

    async def commit_with(self, session: AsyncSession, entry: AuditEntry) -> AuditEvent:
        """Append ``entry`` in ``session``'s transaction and commit it: the caller's writes and their record
        are stored together, or neither is. Only inside ``appending`` (entered before ``session`` ran anything)."""
        assert self._lock.locked(), "commit_with outside appending()"
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
        prev = await session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
        row = AuditEvent(
            at=utcnow(),
            actor_id=entry.actor_id,
            actor_name=entry.actor_name,
            action=entry.action,
            workspace_id=entry.workspace_id,
            target=entry.target,
            sha256=entry.sha256,
            size=entry.size,
            outcome=entry.outcome,
            request_id=entry.request_id,
            client_addr=entry.client_addr,
            details=entry.details,
            prev_hash=prev or GENESIS,
        )
        row.hash = chain_hash(row.prev_hash, row)
        session.add(row)
        await session.commit()
        return row

    @asynccontextmanager
    async def recording(self, entry: AuditEntry) -> AsyncIterator[AuditEntry]:
        """Record ``entry`` when the block ends: as it is then, or with the code of the ``DomainError`` it
        raised as the outcome (other errors are not recorded: they are bugs, not outcomes)."""
        try:
            yield entry
        except DomainError as exc:
            entry.outcome = exc.code
            await self.record(entry)
            raise
        await self.record(entry)


@dataclass(slots=True)
class AuditFilter:
    """Which records to list: all given conditions hold. ``action`` ending in ``*`` or ``.`` is a prefix."""

    actor_id: int | None = None
    actor_name: str | None = None
    action: str | None = None
    workspace_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(slots=True)
class ChainReport:
    """The outcome of walking the whole chain: where it first breaks, if it does."""

    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str | None = None
    head: str = GENESIS


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def audit_page(
    sessionmaker: SessionMaker, flt: AuditFilter, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[AuditEvent], str | None]:
    """Records matching ``flt``, newest first; pass the returned cursor for the next page."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if cursor:
        try:
            query = query.where(AuditEvent.id < int(cursor))
        except ValueError:
            raise BadRequest("invalid cursor", code="bad_request") from None
    if flt.actor_id is not None:
        query = query.where(AuditEvent.actor_id == flt.actor_id)
    if flt.actor_name:
        query = query.where(AuditEvent.actor_name == flt.actor_name)
    if flt.action:
        if flt.action.endswith(("*", ".")):
            query = query.where(AuditEvent.action.like(_like_prefix(flt.action.rstrip("*")), escape="\\"))
        else:
            query = query.where(AuditEvent.action == flt.action)
    if flt.workspace_id:
        query = query.where(AuditEvent.workspace_id == flt.workspace_id)
    if flt.since is not None:
        query = query.where(AuditEvent.at >= flt.since)
    if flt.until is not None:
        query = query.where(AuditEvent.at < flt.until)
    async with sessionmaker() as session:
        rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (str(rows[-1].id) if more and rows else None)


async def verify_chain(sessionmaker: SessionMaker, *, batch: int = 1000) -> ChainReport:
    """Walk every record in order: each must carry the previous record's hash and its own correct hash."""
    previous = GENESIS
    checked = 0
    last_id = 0
    while True:
        async with sessionmaker() as session:
            query = select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
            rows = list((await session.scalars(query)).all())
        if not rows:
            return ChainReport(True, checked, head=previous)
        for row in rows:
            if row.prev_hash != previous:
                return ChainReport(False, checked, row.id, "prev_hash does not match the previous record", previous)
            if chain_hash(row.prev_hash, row) != row.hash:
                return ChainReport(False, checked, row.id, "the record's contents do not match its hash", previous)
            previous = row.hash
            checked += 1
            last_id = row.id
