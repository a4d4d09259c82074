"""``/health`` (alive) and ``/ready`` (every dependency answers)."""

from __future__ import annotations

import re
import time
from typing import Any

import anyio
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app.context import AppContext, ReadyCheck
from app.schemas import CheckResult, EngineStatus, ReadyResponse
from app.services.runtime.engines import EngineCheck

CHECK_TIMEOUT = 3.0
PATH_MODE_WARNING = (
    "path mode: every workspace is served under /w/{id}/ on the hub's own origin, so workspace pages are not "
    "isolated from the hub (only owners may open them)"
)


@get("/health", opt={"public": True}, tags=["health"], operation_id="health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@get(
    "/ready",
    opt={"public": True},
    tags=["health"],
    operation_id="ready",
    responses={503: ResponseSpec(data_container=ReadyResponse, description="a required check failed")},
)
async def ready(request: Request[Any, Any, Any], ctx: AppContext) -> Response[ReadyResponse]:
    """Database, Redis and the event hub (when configured), and every engine: status, latency, API version.

    503 when a dependency is down, when the default engine is (the hub-wide runtime, or the default server),
    or when no engine of the kind new workspaces get answers. Any other server that is down is named in
    ``down`` without failing readiness: its workspaces fail, the hub still serves the others. An engine's
    error text (it may name internal hosts) is shown to admins only; credentials in URLs never.
    """
    results: list[CheckResult] = []

    async def run(name: str, check: ReadyCheck) -> None:
        started = time.perf_counter()
        error = None
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                await check()
        except TimeoutError:
            error = f"no answer within {CHECK_TIMEOUT:.0f} s"
        except Exception as exc:  # a failed check is reported, not raised
            error = f"{type(exc).__name__}: {exc}"[:300]
        results.append(CheckResult(name, error is None, round((time.perf_counter() - started) * 1000, 2), error))

    engines: list[EngineCheck] = []

    async def check_engines() -> None:
        try:
            engines.extend(await ctx.engines.check(CHECK_TIMEOUT))
        except Exception as exc:  # the servers table is unreadable: the database check reports why
            results.append(CheckResult("engines", False, 0.0, f"{type(exc).__name__}: {exc}"[:300]))

    async with anyio.create_task_group() as tg:
        for name, check in ctx.ready_checks.items():
            tg.start_soon(run, name, check)
        tg.start_soon(check_engines)
    results.sort(key=lambda r: r.name)
    user = request.scope.get("user")
    statuses = [_status(e, detailed=bool(user is not None and user.is_admin)) for e in engines]
    serving = [e for e in statuses if e.kind == ctx.engines.default_kind]
    ok = (
        all(r.ok for r in results)
        and all(e.ok for e in statuses if e.required)
        and (not serving or any(e.ok for e in serving))
    )
    down = [e.name for e in statuses if not e.ok]
    body = ReadyResponse(ok, results, statuses, down, [] if ctx.settings.workspace_domain else [PATH_MODE_WARNING])
    return Response(body, status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE)


_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def _status(check: EngineCheck, *, detailed: bool) -> EngineStatus:
    info = check.info
    error = None
    if info.error:
        error = _USERINFO.sub("***@", info.error)[:300] if detailed else "down (admins see why)"
    return EngineStatus(
        name=check.name,
        kind=check.kind,
        ok=info.ok,
        required=check.required,
        latency_ms=check.latency_ms,
        server_id=check.server_id,
        version=info.version,
        api_version=info.api_version,
        error=error,
    )
