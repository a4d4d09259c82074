"""The audit log over HTTP: everyone's records (admins), one's own records, and a chain check."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.params import Parameter, QueryParameter

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.models import AuditEvent
from app.services.audit.log import AuditFilter, audit_page, verify_chain
from app.services.auth.access import Principal


class AuditRecord(msgspec.Struct):
    """One audited action: who, what, where, hashes and sizes of the content (never the content)."""

    id: int
    at: datetime
    actor_id: int | None
    actor_name: str | None
    action: str
    workspace_id: str | None
    target: str | None
    sha256: str | None
    size: int | None
    outcome: str
    request_id: str | None
    client_addr: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: AuditEvent) -> AuditRecord:
        """From a database row."""
        return cls(
            row.id,
            row.at,
            row.actor_id,
            row.actor_name,
            row.action,
            row.workspace_id,
            row.target,
            row.sha256,
            row.size,
            row.outcome,
            row.request_id,
            row.client_addr,
            row.details or {},
            row.prev_hash,
            row.hash,
        )


class AuditPage(msgspec.Struct):
    """Records, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[AuditRecord]
    next_cursor: str | None


class ChainStatus(msgspec.Struct):
    """Whether every record carries the hash of the one before and a hash matching its own contents."""

    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str | None
    head: str


Limit = Annotated[int, Parameter(ge=1, le=500, description="records per page")]
Cursor = Annotated[str | None, Parameter(max_length=20, description="next_cursor of the previous page")]
Action = Annotated[str | None, Parameter(max_length=64, description="exact action, or a prefix ending in * or .")]
Workspace = Annotated[str | None, QueryParameter(name="workspace_id", max_length=16)]
WorkspaceAlias = Annotated[str | None, QueryParameter(name="workspace", max_length=16)]
Since = Annotated[datetime | None, Parameter(description="records at or after this time (ISO 8601)")]
Until = Annotated[datetime | None, Parameter(description="records before this time (ISO 8601)")]


def _filter(action: str | None, workspace: str | None, since: datetime | None, until: datetime | None) -> AuditFilter:
    return AuditFilter(action=action or None, workspace_id=workspace or None, since=since, until=until)


class AuditController(Controller):
    """``/api/audit``: the caller's own records."""

    path = "/api/audit"
    tags = ["audit"]

    @get("/", operation_id="listOwnAudit", responses=error_responses(400, 401))
    async def own(
        self,
        ctx: AppContext,
        principal: Principal,
        action: Action = None,
        workspace_id: Workspace = None,
        workspace: WorkspaceAlias = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AuditPage:
        """The caller's own audit records, newest first."""
        flt = _filter(action, workspace_id or workspace, since, until)
        flt.actor_id = principal.user_id
        rows, next_cursor = await audit_page(ctx.sessionmaker, flt, limit=limit, cursor=cursor)
        return AuditPage([AuditRecord.of(row) for row in rows], next_cursor)


class AdminAuditController(Controller):
    """``/api/admin/audit``: everyone's records and the chain check (admins)."""

    path = "/api/admin/audit"
    tags = ["audit"]
    guards = [requires_admin]

    @get("/", operation_id="listAudit", responses=error_responses(400, 401, 403))
    async def list_all(
        self,
        ctx: AppContext,
        actor: Annotated[str | None, Parameter(max_length=64, description="user name or numeric id")] = None,
        action: Action = None,
        workspace_id: Workspace = None,
        workspace: WorkspaceAlias = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AuditPage:
        """Audit records of everyone, newest first, filtered by actor, action, workspace and time."""
        flt = _filter(action, workspace_id or workspace, since, until)
        if actor:
            if actor.isdigit():
                flt.actor_id = int(actor)
            else:
                flt.actor_name = actor
        rows, next_cursor = await audit_page(ctx.sessionmaker, flt, limit=limit, cursor=cursor)
        return AuditPage([AuditRecord.of(row) for row in rows], next_cursor)

    @get("/verify", operation_id="verifyAudit", responses=error_responses(401, 403))
    async def verify(self, ctx: AppContext) -> ChainStatus:
        """Walk the whole chain and report whether it is intact (and where it first breaks)."""
        report = await verify_chain(ctx.sessionmaker)
        return ChainStatus(report.ok, report.checked, report.first_bad_id, report.reason, report.head)
