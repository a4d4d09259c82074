"""Scrape-time values of ``/metrics``: workspaces by state from the database, the dependency checks, and every
engine (``codehub_dependency_up{name="engine:<server name>"}``, as ``/ready`` sees them)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
from sqlalchemy import func, select

from app import metrics
from app.db import SessionMaker
from app.models import STORED_STATES, Workspace
from app.services.runtime.engines import Engines

CHECK_TIMEOUT = 3.0


async def count_workspaces(sessionmaker: SessionMaker) -> dict[str, int]:
    """Workspaces per state (one GROUP BY on the indexed state column)."""
    async with sessionmaker() as session:
        rows = await session.execute(select(Workspace.state, func.count()).group_by(Workspace.state))
        return {state: int(n) for state, n in rows.all()}


async def _check(name: str, check: Callable[[], Awaitable[object]]) -> None:
    started = time.perf_counter()
    up = False
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            await check()
        up = True
    except Exception:  # a failed check is a value (0), not an error of the scrape
        up = False
    metrics.set_dependency(name, up, time.perf_counter() - started)


async def _workspaces(sessionmaker: SessionMaker) -> None:
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            counts = await count_workspaces(sessionmaker)
    except Exception:  # database down: keep the last values; codehub_dependency_up says why
        return
    metrics.set_workspace_counts(counts, STORED_STATES)


_engine_series: set[str] = set()


async def _engines(engines: Engines) -> None:
    try:
        found = await engines.check(CHECK_TIMEOUT)
    except Exception:  # the servers table is unreadable: the database check says so
        return
    names = set()
    for engine in found:
        name = f"engine:{engine.name}"
        names.add(name)
        metrics.set_dependency(name, engine.info.ok, engine.latency_ms / 1000)
    for gone in _engine_series - names:  # a deleted server's series go away
        metrics.forget_dependency(gone)
    _engine_series.clear()
    _engine_series.update(names)


async def refresh(
    sessionmaker: SessionMaker,
    checks: Mapping[str, Callable[[], Awaitable[object]]],
    engines: Engines | None = None,
) -> None:
    """Update the scrape-time gauges: run every check, ask every engine and count workspaces, concurrently,
    each bounded in time."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_workspaces, sessionmaker)
        for name, check in checks.items():
            tg.start_soon(_check, name, check)
        if engines is not None:
            tg.start_soon(_engines, engines)
