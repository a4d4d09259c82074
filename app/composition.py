"""The composition root: what a hub process is made of, built in dependency order and closed in reverse.

``compose(settings)`` opens, in order: the database (checked to be migrated), Redis (when configured), the
event hub, the rate limiter, the LLM client, the revocation channel and the record services (templates: the
default one of a fresh install); then the task group that every background loop and request-spawned job runs
in, and inside it the runtimes, the workspace state machine and what hangs on it, template images, the AI
service and the relay. When the block ends the task group is
cancelled first, so loops and jobs stop while what they use still works; everything else then closes in
reverse.
``app.factory``'s lifespan serves the ``AppContext`` it yields.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from redis.asyncio import Redis

from app import db, metrics
from app.context import AppContext, ReadyCheck
from app.db import SessionMaker
from app.services.ai.llm import LLMClient
from app.services.ai.owners import AIOwners, MemoryAIOwners, RedisAIOwners
from app.services.ai.service import AIService, Validator
from app.services.audit.log import AuditLog
from app.services.auth.identities import IdentityService
from app.services.auth.oidc import OidcClient
from app.services.auth.ratelimit import SharedAILimiter, api_limit, create_rate_limiter
from app.services.auth.revocations import RedisRevocations
from app.services.auth.users import AuthService, dummy_hash
from app.services.files import patches
from app.services.files.storage import WorkspaceStorage
from app.services.groups.service import GroupService
from app.services.quotas.service import QuotaService
from app.services.runtime.cache import StatusCache
from app.services.runtime.engines import Engines, make_status_cache
from app.services.runtime.ide_secret import server_key
from app.services.templates.images import TemplateImages
from app.services.templates.service import TemplateService
from app.services.workspaces.lifecycle import Lifecycle
from app.services.workspaces.log_pump import LogPumps
from app.services.workspaces.ops import WorkspaceOps
from app.services.workspaces.provisioning import Provisioning
from app.services.workspaces.reconcile import Reconciler
from app.services.workspaces.records import WorkspaceService
from app.services.workspaces.servers import ServerService
from app.settings import Settings
from app.streams.events.backend import open_hub
from app.streams.events.hub import Hub
from app.streams.net.http_transport import LinkTransport, direct_http
from app.streams.relay.deps import RelayDeps
from app.streams.relay.follow import follow_lifecycle
from app.streams.relay.front import Relay
from app.version import hub_version

log = logging.getLogger(__name__)


@asynccontextmanager
async def compose(settings: Settings) -> AsyncIterator[AppContext]:
    """Build every long-lived service of a hub process, start its loops; stop and close all at the end."""
    async with AsyncExitStack() as stack:
        engine = db.create_engine(settings)
        stack.push_async_callback(engine.dispose)
        await db.check_migrated(engine)
        if not settings.hub_id:
            settings = msgspec.structs.replace(settings, hub_id=await db.deployment_hub_id(engine))
        sessionmaker = db.create_sessionmaker(engine)
        ready_checks: dict[str, ReadyCheck] = {"database": lambda: db.ping(engine)}
        redis = _open_redis(settings)
        if redis is not None:
            stack.push_async_callback(redis.aclose)
            ready_checks["redis"] = redis.ping
        hub = await stack.enter_async_context(open_hub(settings))
        if settings.redis_url:
            ready_checks["events"] = hub.check
        stack.callback(_export_hub_metrics(hub))
        rate_limiter, close_rate_limiter = create_rate_limiter(settings)
        if close_rate_limiter is not None:
            stack.push_async_callback(close_rate_limiter)
        llm = LLMClient(
            settings,
            limiter=SharedAILimiter(settings, rate_limiter),
            transport=LinkTransport() if direct_http(settings.llm_base_url) else None,
        )
        stack.push_async_callback(llm.aclose)
        revocations = RedisRevocations(settings) if settings.redis_url else None
        if revocations is not None:
            stack.push_async_callback(revocations.aclose)
        auth = AuthService(sessionmaker, settings, revocations)
        await anyio.to_thread.run_sync(dummy_hash)
        oidc = OidcClient(settings, sessionmaker, server_key(settings) if settings.oidc_issuer else b"")
        stack.push_async_callback(oidc.aclose)
        audit = AuditLog(sessionmaker)
        quotas = QuotaService(sessionmaker, settings)
        workspaces = WorkspaceService(sessionmaker, settings, hub, quotas)
        templates = TemplateService(sessionmaker, settings, hub)
        await _bootstrap_admin(settings, auth)
        await templates.ensure_default()

        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        engines: Engines = await tasks.start(_hold_engines, settings, sessionmaker, make_status_cache(settings, redis))
        servers = ServerService(sessionmaker, engines, hub)
        lifecycle = Lifecycle(sessionmaker, settings, hub, engines, workspaces, servers, tasks, templates, quotas)
        log_pumps = LogPumps(lifecycle, sessionmaker, tasks, redis)
        lifecycle.listeners.append(log_pumps.on_lifecycle)
        reconciler = Reconciler(lifecycle)
        ai_owners: AIOwners = (
            RedisAIOwners(redis, settings.redis_prefix, settings.event_ttl)
            if redis is not None
            else MemoryAIOwners(settings.event_ttl)
        )
        relay = Relay(
            RelayDeps(
                settings=settings,
                sessionmaker=sessionmaker,
                events=hub,
                auth=auth,
                audit=audit,
                workspaces=workspaces,
                lifecycle=lifecycle,
                engines=engines,
                redis=redis,
            )
        )
        ctx = AppContext(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            redis=redis,
            events=hub,
            tasks=tasks,
            ready_checks=ready_checks,
            rate_limiter=rate_limiter,
            api_limit=api_limit(settings),
            auth=auth,
            oidc=oidc,
            identities=IdentityService(sessionmaker, settings, auth),
            audit=audit,
            workspaces=workspaces,
            engines=engines,
            servers=servers,
            lifecycle=lifecycle,
            provisioning=Provisioning(engines, servers, lifecycle),
            workspace_ops=WorkspaceOps(lifecycle),
            log_pumps=log_pumps,
            ai=AIService(llm, hub, settings, audit=audit.record, validate=_patch_validator(settings)),
            ai_owners=ai_owners,
            relay=relay,
            templates=templates,
            quotas=quotas,
            groups=GroupService(sessionmaker),
            template_images=TemplateImages(sessionmaker, settings, engines, hub, tasks),
        )

        # Other processes' workspace changes invalidate this one's cached list pages.
        tasks.start_soon(workspaces.pages.follow_events, hub)
        if revocations is not None:  # other processes' revocations drop this one's cached tokens
            tasks.start_soon(revocations.follow, auth.tokens)
        tasks.start_soon(reconciler.loop, tasks)
        tasks.start_soon(reconciler.idle_loop)
        tasks.start_soon(log_pumps.loop)
        tasks.start_soon(relay.hold)
        tasks.start_soon(relay.activity.flush_loop)
        tasks.start_soon(follow_lifecycle, relay)
        tasks.start_soon(relay.presence.run)
        tasks.start_soon(relay.stats.sync_metrics)
        yield ctx


def _open_redis(settings: Settings) -> Redis | None:
    """The client for caches, leases, AI ownership and presence (the hub and the rate limiter have their own)."""
    if not settings.redis_url:
        return None
    return Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30)


def _export_hub_metrics(hub: Hub) -> Callable[[], None]:
    """Label ``codehub_info`` and export the hub's counters; returns the function that stops the export."""
    metrics.INFO.labels(hub_version(), hub.backend).set(1)
    return metrics.HUB_STATS.add(hub.stats)


async def _bootstrap_admin(settings: Settings, auth: AuthService) -> None:
    """Create the first admin from ``CODEHUB_ADMIN_USERNAME``/``_PASSWORD`` while there are no users."""
    if settings.admin_username and settings.admin_password and await auth.count_users() == 0:
        await auth.create_user(settings.admin_username, settings.admin_password, "admin")
        log.info("created the first admin %r from CODEHUB_ADMIN_USERNAME", settings.admin_username)


async def _hold_engines(
    settings: Settings,
    sessionmaker: SessionMaker,
    cache: StatusCache,
    *,
    task_status: TaskStatus[Engines] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Own the engines for the app's lifetime: entered and left in this one task."""
    async with Engines(settings, sessionmaker, cache) as engines:
        await engines.boot()
        task_status.started(engines)
        await anyio.sleep_forever()


def _patch_validator(settings: Settings) -> Validator:
    """How the AI service checks a rewrite's diff against the workspace (through its storage)."""
    limits = patches.PatchLimits.from_settings(settings)

    async def validate(storage: WorkspaceStorage, diff: str) -> dict[str, Any]:
        result = await storage.validate_patch(diff, limits=limits)
        checked: dict[str, Any] = msgspec.to_builtins(result)
        return checked

    return validate
