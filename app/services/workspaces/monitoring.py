"""Scrape-time values of ``/metrics``: workspaces by state from the database and the dependency checks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
from sqlalchemy import func, select

from app import metrics
from app.db import SessionMaker
from app.models import STORED_STATES, Workspace

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


async def refresh(sessionmaker: SessionMaker, checks: Mapping[str, Callable[[], Awaitable[object]]]) -> None:
    """Update the scrape-time gauges: run every check and count workspaces, concurrently, each bounded in time."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_workspaces, sessionmaker)
        for name, check in checks.items():
            tg.start_soon(_check, name, check)
