"""The application context: the long-lived services ``app.composition`` builds, shared by request handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from anyio.abc import TaskGroup
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import SessionMaker
from app.services.ai.owners import AIOwners
from app.services.ai.service import AIService
from app.services.audit.log import AuditLog
from app.services.auth.identities import IdentityService
from app.services.auth.oidc import OidcClient
from app.services.auth.ratelimit import Limit, RateLimiter
from app.services.auth.users import AuthService
from app.services.groups.service import GroupService
from app.services.quotas.service import QuotaService
from app.services.runtime.engines import Engines
from app.services.templates.images import TemplateImages
from app.services.templates.service import TemplateService
from app.services.workspaces.lifecycle import Lifecycle
from app.services.workspaces.log_pump import LogPumps
from app.services.workspaces.ops import WorkspaceOps
from app.services.workspaces.provisioning import Provisioning
from app.services.workspaces.records import WorkspaceService
from app.services.workspaces.servers import ServerService
from app.settings import Settings
from app.streams.events.hub import Hub
from app.streams.relay.front import Relay

ReadyCheck = Callable[[], Awaitable[object]]


@dataclass(frozen=True, kw_only=True)
class AppContext:
    """Everything a request handler may need beyond the request, built once per app by ``app.composition``.

    ``tasks`` is the task group background loops (reconciler, idle stops, log pumps, relay upkeep) and
    request-spawned jobs (starts, clones, AI requests) run in; it is cancelled at shutdown. ``ready_checks``
    are run by ``GET /ready`` (each raises when its service is down).
    """

    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    redis: Redis | None
    events: Hub
    tasks: TaskGroup
    ready_checks: dict[str, ReadyCheck]
    rate_limiter: RateLimiter
    api_limit: Limit
    auth: AuthService
    oidc: OidcClient
    identities: IdentityService
    audit: AuditLog
    workspaces: WorkspaceService
    engines: Engines
    servers: ServerService
    lifecycle: Lifecycle
    provisioning: Provisioning
    workspace_ops: WorkspaceOps
    log_pumps: LogPumps
    ai: AIService
    ai_owners: AIOwners
    relay: Relay
    templates: TemplateService
    template_images: TemplateImages
    quotas: QuotaService
    groups: GroupService
    ai_workspace_grants: dict[tuple[int, str], float] = field(default_factory=dict)
