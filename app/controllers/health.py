"""``/health`` (alive) and ``/ready`` (every dependency answers)."""

from __future__ import annotations

import time

import anyio
from litestar import Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from app.context import AppContext, ReadyCheck
from app.schemas import CheckResult, ReadyResponse

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
async def ready(ctx: AppContext) -> Response[ReadyResponse]:
    """Database, Redis (when configured) and each Docker server (when configured): status and latency."""
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

    async with anyio.create_task_group() as tg:
        for name, check in ctx.ready_checks.items():
            tg.start_soon(run, name, check)
    results.sort(key=lambda r: r.name)
    ok = all(r.ok for r in results)
    body = ReadyResponse(ok, results, [] if ctx.settings.workspace_domain else [PATH_MODE_WARNING])
    return Response(body, status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE)
