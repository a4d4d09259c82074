"""Hash-chained audit log: what happened, by whom, with hashes and sizes, never content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import anyio
from sqlalchemy import select, text

from app.db import SessionMaker
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
        async with self._lock, self._sessionmaker() as session, session.begin():
            if session.bind.dialect.name == "postgresql":
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
        return row
