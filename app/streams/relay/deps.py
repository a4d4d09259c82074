"""What the relay and the web terminal use of the rest of the hub, handed to them by the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.db import SessionMaker
from app.services.audit.log import AuditLog
from app.services.auth.users import AuthService
from app.services.runtime.engines import Engines
from app.services.workspaces.lifecycle import Lifecycle
from app.services.workspaces.records import WorkspaceService
from app.settings import Settings
from app.streams.events.hub import Hub


@dataclass(frozen=True, kw_only=True, slots=True)
class RelayDeps:
    """The services ``/w/…`` and ``/ws/workspaces/…`` need: credentials, routes, starts, shells, audit, events."""

    settings: Settings
    sessionmaker: SessionMaker
    events: Hub
    auth: AuthService
    audit: AuditLog
    workspaces: WorkspaceService
    lifecycle: Lifecycle
    engines: Engines
    redis: Any = None  # shares presence with the other hub processes (None: this process only)
