"""Log pumps: the output of running workspaces published as ``log.line`` events on ``workspace:<id>:logs``.

Exactly one pump per running workspace across all hub processes follows the runtime's logs. With Redis
the pump holds a lease ``<prefix>:logpump:<id>`` (``SET NX PX``, renewed every sweep, deleted when the
pump ends); without Redis the pump table of this process is the lease. Pumps start on the ``running``
transition and, every sweep, for running workspaces without a live pump anywhere (hub restart, a
lapsed lease, a dead process); they end with the workspace's output (stop, failure, delete).

A pump that ends by itself while its workspace still runs (the engine does not answer, its log stream
broke) is tried again by the sweep after ``RETRY_FIRST`` seconds, doubling up to ``RETRY_MAX`` (and at once
on the next ``running`` transition): every sweep re-trying every broken pump at once held the event loop
for about 100 ms per 80 workspaces, the p99 of every request during it. For the same reason at most
``SETUP_AT_ONCE`` pumps read their row, engine and resume point at a time.

A pump resumes from the last line history holds for the topic (the runtime's ``since``, then lines
history already holds are skipped: ``ResumePoint``), so a restarted pump publishes no line twice. Lines that arrive
together go out as one event: ``{at, text}`` for one line, ``{at, text, lines: [{at, text}, …]}`` for
several (``text`` joined by newlines, ``at`` of the first), one hub publish per batch.

Pumps never log line text: logs and the database must not carry workspace content.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from sqlalchemy import select

from app.db import SessionMaker
from app.errors import DomainError
from app.events import workspace_logs_topic
from app.models import Workspace, WorkspaceState
from app.services.runtime.base import LogLine
from app.services.runtime.common import unix_from_iso
from app.services.workspaces.lifecycle import Lifecycle

log = logging.getLogger(__name__)

SWEEP_EVERY = 5.0
LEASE_TTL = 20.0
STOP_GRACE = 3.0
RESUME_TAIL = 5000
MAX_BATCH_LINES = 500
MAX_BATCH_CHARS = 256 * 1024
MAX_LINE_CHARS = 16 * 1024
READ_BUFFER = 1000
RETRY_FIRST = 10.0
RETRY_MAX = 120.0
HEALTHY_AFTER = 60.0
SETUP_AT_ONCE = 4
ENDED = ("workspace.stopped", "workspace.failed", "workspace.deleted")

RENEW_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class _Pump:
    """One pump of this process: its lease token and the scope that ends it."""

    __slots__ = ("scope", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.scope = anyio.CancelScope()


def last_line_at(data: dict[str, Any]) -> str | None:
    """The time of the last timestamped line of a ``log.line`` event's data."""
    lines = data.get("lines")
    for line in reversed(lines) if isinstance(lines, list) else [data]:
        at = line.get("at") if isinstance(line, dict) else None
        if isinstance(at, str) and at:
            return at
    return None


class ResumePoint:
    """Where a restarted pump picks up: the time of the last line history holds and the texts at that time.

    Timestamps have microseconds, and a fast printer puts several lines in one: lines before the cursor
    are skipped, lines at it only when the last event carried them, and once a line after the cursor has
    come nothing more is filtered (a live stream repeats nothing).
    """

    def __init__(self, data: dict[str, Any] | None) -> None:
        self.at = last_line_at(data) if data else None
        lines = data.get("lines") if data else None
        items = lines if isinstance(lines, list) else [data] if data else []
        self._held = Counter(
            str(line.get("text")) for line in items if isinstance(line, dict) and line.get("at") == self.at
        )

    def fresh(self, line: LogLine) -> bool:
        """True when ``line`` is not in history yet (call for each line, in order)."""
        if self.at is None or not line.at:
            return True
        if line.at > self.at:
            self.at = None
            return True
        if line.at < self.at:
            return False
        if self._held[line.text] > 0:  # at the cursor's microsecond, and the last event carried it
            self._held[line.text] -= 1
            return False
        return True


def batch_data(lines: list[LogLine]) -> dict[str, Any]:
    """The event data of lines published together."""
    if len(lines) == 1:
        return {"at": lines[0].at, "text": lines[0].text}
    return {
        "at": lines[0].at,
        "text": "\n".join(line.text for line in lines),
        "lines": [{"at": line.at, "text": line.text} for line in lines],
    }


class LogPumps:
    """The pumps of this hub process, and the sweep that keeps one per running workspace."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        sessionmaker: SessionMaker,
        tasks: TaskGroup,
        redis: Any = None,
        *,
        sweep_every: float | None = None,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.lifecycle = lifecycle
        self.events = lifecycle.events
        self._sessionmaker = sessionmaker
        self._tasks = tasks
        self.redis = redis
        self.sweep_every = sweep_every or min(SWEEP_EVERY, lifecycle.settings.reconcile_interval)
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self._prefix = f"{lifecycle.settings.redis_prefix}:logpump:"
        self._owner = secrets.token_hex(8)
        self.pumps: dict[str, _Pump] = {}
        self.published = 0
        self._retry: dict[str, tuple[float, float]] = {}  # workspace -> (not before, delay) after a failure
        self._setup = anyio.CapacityLimiter(SETUP_AT_ONCE)
        if redis is not None:
            self._renew = redis.register_script(RENEW_LUA)
            self._release = redis.register_script(RELEASE_LUA)

    def lease_key(self, workspace_id: str) -> str:
        """Redis key of a workspace's pump lease."""
        return self._prefix + workspace_id

    # -- starting and stopping --------------------------------------------------------------------------

    def on_lifecycle(self, ws: Workspace, type_: str) -> None:
        """Lifecycle listener: a pump on ``running``; the pump ends soon after ``stopped|failed|deleted``."""
        if type_ == "workspace.running":
            self._retry.pop(ws.id, None)
            self._tasks.start_soon(self.ensure, [ws.id])
        elif type_ in ENDED:
            self.stop(ws.id)

    def stop(self, workspace_id: str, grace: float = STOP_GRACE) -> None:
        """End this process's pump of a workspace within ``grace`` seconds (its last lines may still come)."""
        pump = self.pumps.get(workspace_id)
        if pump is not None:
            pump.scope.deadline = min(pump.scope.deadline, anyio.current_time() + grace)

    async def ensure(self, workspace_ids: Iterable[str]) -> None:
        """Start a pump for each workspace that has none here and is not waiting to be tried again, where the
        lease is free (one round trip)."""
        now = anyio.current_time()
        fresh = {
            wid: _Pump(f"{self._owner}:{secrets.token_hex(4)}")
            for wid in workspace_ids
            if wid not in self.pumps and self._retry.get(wid, (0.0, 0.0))[0] <= now
        }
        if not fresh:
            return
        self.pumps.update(fresh)
        won = list(fresh)
        if self.redis is not None:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for wid, pump in fresh.items():
                        pipe.set(self.lease_key(wid), pump.token, nx=True, px=self.lease_ttl_ms)
                    answers = await pipe.execute()
            except Exception as exc:
                log.warning("log pump leases not taken: %s", exc)
                answers = [False] * len(fresh)
            won = [wid for wid, ok in zip(fresh, answers, strict=True) if ok]
            for wid in fresh.keys() - set(won):
                self.pumps.pop(wid, None)
        for wid in won:
            self._tasks.start_soon(self._run, wid, fresh[wid])

    async def _run(self, workspace_id: str, pump: _Pump) -> None:
        started = anyio.current_time()
        try:
            with pump.scope:
                await self._pump(workspace_id)
        except DomainError as exc:
            log.info("log pump of %s ended: %s", workspace_id, exc.code)
        except Exception:
            log.exception("log pump of %s failed", workspace_id)
        finally:
            if not pump.scope.cancel_called:  # ended by itself, not stopped here: back off before the next try
                self._back_off(workspace_id, anyio.current_time() - started)
            if self.pumps.get(workspace_id) is pump:
                del self.pumps[workspace_id]
            if self.redis is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                    try:
                        await self._release(keys=[self.lease_key(workspace_id)], args=[pump.token])
                    except Exception as exc:  # the lease then lapses by itself
                        log.warning("log pump lease of %s not released: %s", workspace_id, exc)

    def _back_off(self, workspace_id: str, ran: float) -> None:
        delay = self._retry.get(workspace_id, (0.0, 0.0))[1]
        delay = RETRY_FIRST if ran >= HEALTHY_AFTER or not delay else min(RETRY_MAX, delay * 2)
        self._retry[workspace_id] = (anyio.current_time() + delay, delay)

    # -- pumping ---------------------------------------------------------------------------------------

    async def _pump(self, workspace_id: str) -> None:
        topic = workspace_logs_topic(workspace_id)
        async with self._setup:
            ws = await self.lifecycle.row(workspace_id)
            if ws.state != WorkspaceState.RUNNING:
                return
            runtime = await self.lifecycle.engines.for_workspace(ws)
            resume = ResumePoint(await self._last_data(topic))
        # A little early: the runtime's ``since`` may round; lines history holds are skipped below.
        since = unix_from_iso(resume.at) - 0.001 if resume.at else None
        source = runtime.follow_logs(workspace_id, tail=RESUME_TAIL, since=since)
        send, receive = anyio.create_memory_object_stream[LogLine](READ_BUFFER)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_read, source, send)
                async with receive:
                    async for first in receive:
                        batch = _drain(first, receive)
                        if resume.at:
                            batch = [line for line in batch if resume.fresh(line)]
                        if not batch:
                            continue
                        await self.events.publish(topic, "log.line", batch_data(batch))
                        self.published += len(batch)
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # the reader's error (engine gone, workspace not found), unwrapped
                raise group.exceptions[0] from None
            raise

    async def _last_data(self, topic: str) -> dict[str, Any] | None:
        last_event = getattr(self.events, "last_event", None)
        if last_event is None:
            return None
        event = await last_event(topic)
        return None if event is None else event.data

    # -- the sweep -------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Renew this process's leases, end pumps of workspaces no longer running, start missing ones."""
        await self._renew_leases()
        async with self._sessionmaker() as session:
            running = set(
                (await session.scalars(select(Workspace.id).where(Workspace.state == WorkspaceState.RUNNING))).all()
            )
        for wid in list(self.pumps):
            if wid not in running:
                self.stop(wid)
        for wid in self._retry.keys() - running:
            del self._retry[wid]
        await self.ensure(sorted(running))

    async def _renew_leases(self) -> None:
        if self.redis is None or not self.pumps:
            return
        held = list(self.pumps.items())
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid, pump in held:
                await self._renew(keys=[self.lease_key(wid)], args=[pump.token, self.lease_ttl_ms], client=pipe)
            answers = await pipe.execute(raise_on_error=False)
        for (wid, pump), answer in zip(held, answers, strict=True):
            if answer == 0:  # the lease lapsed and may be someone else's now: this pump must go
                log.warning("log pump of %s lost its lease", wid)
                pump.scope.cancel()

    async def loop(self) -> None:
        """Sweep every ``sweep_every`` seconds (5 s, or the reconcile interval when shorter) for the app's lifetime."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # a database or Redis hiccup: the next sweep tries again
                log.warning("log pump sweep failed: %s", exc)
            await anyio.sleep(self.sweep_every)

    def stats(self) -> dict[str, int]:
        """Pumps running here and lines they published."""
        return {"pumps": len(self.pumps), "published_lines": self.published}


async def _read(source: AsyncGenerator[LogLine, None], send: MemoryObjectSendStream[LogLine]) -> None:
    async with send:
        try:
            async for line in source:
                if len(line.text) > MAX_LINE_CHARS:
                    line = LogLine(line.at, line.text[:MAX_LINE_CHARS])
                await send.send(line)
        finally:
            with anyio.CancelScope(shield=True):
                await source.aclose()


def _drain(first: LogLine, receive: Any) -> list[LogLine]:
    batch, size = [first], len(first.text)
    while len(batch) < MAX_BATCH_LINES and size < MAX_BATCH_CHARS:
        try:
            line = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
        batch.append(line)
        size += len(line.text)
    return batch
