"""The application context: long-lived resources built once in the app's lifespan and shared by handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from anyio.abc import TaskGroup
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import SessionMaker
from app.services.audit.log import AuditLog
from app.services.auth.users import AuthService
from app.services.workspaces.records import WorkspaceService
from app.settings import Settings

ReadyCheck = Callable[[], Awaitable[None]]


@dataclass
class AppContext:
    """Everything a request handler may need beyond the request: settings, database, event hub, services.

    ``tasks`` is the lifespan's task group: background loops (reconciler, idle checker) run there and are
    cancelled at shutdown. ``ready_checks`` are run by ``GET /ready`` (each raises when its service is down).
    ``extras`` lets later parts (runtimes, LLM client, relay pool) hang their
    long-lived objects without widening this class for each.
    """

    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    events: Any
    tasks: TaskGroup
    auth: AuthService
    audit: AuditLog
    workspaces: WorkspaceService
    redis: Any = None
    ready_checks: dict[str, ReadyCheck] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
