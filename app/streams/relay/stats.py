"""Relay counters (plain integers on the hot path) and activity notes for idle stops.

``RelayStats`` keeps per-workspace counters: HTTP requests and upstream failures, open and total
WebSockets, failed upgrades, close codes, bytes each way, open terminals. ``sync_metrics`` copies them into
the Prometheus objects of ``app.metrics`` every few seconds, summed per server (the workspace's server id,
``hub`` for hub-run workspaces: labels stay bounded however many workspaces come and go), so a relayed frame
costs an integer addition, not a locked metric update. ``Activity`` turns relay traffic into at most one
``lifecycle.touch`` per workspace per ``every`` seconds, written in the background so no request waits on
the database.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from app import metrics

HUB_SERVER = "hub"  # the metric label of workspaces the hub runs itself (not placed on a server)


class WorkspaceCounters:
    """Counters of one workspace."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "close_codes",
        "failed_upgrades",
        "http_in_flight",
        "http_requests",
        "seen",
        "server",
        "synced_down",
        "synced_up",
        "terminals_open",
        "upstream_errors",
        "websockets_open",
        "websockets_total",
    )

    def __init__(self) -> None:
        self.server = HUB_SERVER
        self.http_requests = 0
        self.http_in_flight = 0
        self.upstream_errors = 0
        self.websockets_open = 0
        self.websockets_total = 0
        self.failed_upgrades = 0
        self.terminals_open = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.synced_up = 0
        self.synced_down = 0
        self.seen = 0
        self.close_codes: dict[str, int] = {}

    def closed(self, side: str, code: int) -> None:
        """Count a WebSocket close: ``side`` is who closed first (``client``, ``ide`` or ``hub``)."""
        key = f"{side}:{code}"
        self.close_codes[key] = self.close_codes.get(key, 0) + 1

    @property
    def busy(self) -> bool:
        """True while anything is open."""
        return bool(self.http_in_flight or self.websockets_open or self.terminals_open)

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain data."""
        return {
            "http_requests": self.http_requests,
            "http_in_flight": self.http_in_flight,
            "upstream_errors": self.upstream_errors,
            "websockets_open": self.websockets_open,
            "websockets_total": self.websockets_total,
            "failed_upgrades": self.failed_upgrades,
            "terminals_open": self.terminals_open,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "close_codes": dict(self.close_codes),
        }


class RelayStats:
    """Counters of every workspace with relay traffic in this process (the relay's ``stats``)."""

    def __init__(self) -> None:
        self.workspaces: dict[str, WorkspaceCounters] = {}
        self._servers: set[str] = set()

    def of(self, workspace_id: str, server_id: str | None = None) -> WorkspaceCounters:
        """The counters of ``workspace_id`` (created on first use); ``server_id`` labels its metrics."""
        counters = self.workspaces.get(workspace_id)
        if counters is None:
            counters = self.workspaces[workspace_id] = WorkspaceCounters()
        if server_id:
            counters.server = server_id
        return counters

    def with_traffic(self) -> list[str]:
        """The workspaces with relayed requests or bytes since the last call."""
        moved = []
        for workspace_id, counters in self.workspaces.items():
            total = counters.http_requests + counters.bytes_up + counters.bytes_down
            if total != counters.seen:
                counters.seen = total
                moved.append(workspace_id)
        return moved

    @property
    def open_websockets(self) -> int:
        """Relayed WebSockets open now, all workspaces."""
        return sum(c.websockets_open for c in self.workspaces.values())

    def forget(self, workspace_id: str) -> None:
        """Drop an idle workspace's counters (it stopped or was deleted); its bytes are synced first."""
        counters = self.workspaces.get(workspace_id)
        if counters is not None and not counters.busy:
            self._sync_bytes(counters)
            del self.workspaces[workspace_id]

    @staticmethod
    def _sync_bytes(counters: WorkspaceCounters) -> None:
        up, down = counters.bytes_up - counters.synced_up, counters.bytes_down - counters.synced_down
        if up:
            metrics.RELAY_BYTES.labels(counters.server, "up").inc(up)
            counters.synced_up = counters.bytes_up
        if down:
            metrics.RELAY_BYTES.labels(counters.server, "down").inc(down)
            counters.synced_down = counters.bytes_down

    def sync(self) -> None:
        """Copy every workspace's counters into the Prometheus objects, summed per server."""
        open_by_server = dict.fromkeys(self._servers, 0)
        for counters in list(self.workspaces.values()):
            self._sync_bytes(counters)
            open_now = counters.http_in_flight + counters.websockets_open + counters.terminals_open
            open_by_server[counters.server] = open_by_server.get(counters.server, 0) + open_now
        for server, open_now in open_by_server.items():
            metrics.RELAY_CONNECTIONS.labels(server).set(open_now)
        self._servers.update(open_by_server)

    async def sync_metrics(self, every: float = 5.0) -> None:
        """Copy counters into ``app.metrics`` every ``every`` seconds, forever."""
        while True:
            await anyio.sleep(every)
            self.sync()


class Activity:
    """Relay traffic as workspace activity: at most one ``touch(workspace_id, source)`` per ``every`` seconds.

    Relayed requests and WebSocket bytes are not noted one by one: ``flush_loop`` asks ``traffic`` (the
    relay's counters) once a tick which workspaces moved, so the hot path pays nothing beyond its counters.
    ``note`` is synchronous and cheap (a dict lookup) for other sources (terminals). The writes happen in the
    background, one second later at most, so no request ever waits on the database.
    """

    def __init__(
        self,
        touch: Callable[[str, str], Awaitable[Any]],
        every: float = 15.0,
        traffic: Callable[[], list[str]] = list,
    ) -> None:
        self._touch = touch
        self._traffic = traffic
        self.every = every
        self._last: dict[str, float] = {}
        self._due: dict[str, str] = {}
        self.writes = 0

    def note(self, workspace_id: str, source: str) -> None:
        """Record traffic now."""
        now = time.monotonic()
        if now - self._last.get(workspace_id, -1e9) < self.every:
            return
        self._last[workspace_id] = now
        self._due[workspace_id] = source

    async def flush(self) -> None:
        """Write what is due (a failed write is retried with the traffic that follows, 5 s later)."""
        due, self._due = self._due, {}
        for workspace_id, source in due.items():
            try:
                await self._touch(workspace_id, source)
                self.writes += 1
            except Exception:  # best effort: the database may be briefly away
                self._last[workspace_id] = time.monotonic() - self.every + 5.0

    async def flush_loop(self, tick: float = 1.0) -> None:
        """Note the relay's traffic and ``flush`` every ``tick`` seconds, forever."""
        while True:
            await anyio.sleep(tick)
            for workspace_id in self._traffic():
                self.note(workspace_id, "relay")
            await self.flush()

    def forget(self, workspace_id: str) -> None:
        """Forget a stopped or deleted workspace."""
        self._last.pop(workspace_id, None)
        self._due.pop(workspace_id, None)
