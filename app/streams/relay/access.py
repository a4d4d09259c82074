"""Where a workspace's IDE answers, and what the relay rewrites on the way (who may pass is decided by
``app.services.auth.access``).

- Credentials are stripped before a request goes to the IDE (``strip_session_cookie``, and
  ``without_access_token`` for old links that still carry a token in the URL): the workspace runs its
  owner's code and must never see a visitor's (an admin's) session.
- ``RouteCache``: owner, state and endpoint per workspace, read from the database at most every few seconds
  and dropped at once when a lifecycle event for the workspace arrives (``forget``).
- ``rewrite_location`` / ``rewrite_set_cookie``: what the IDE sends back stays under ``/w/{id}/``.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from app.db import SessionMaker
from app.models import Workspace, WorkspaceState
from app.services.auth.access import SESSION_COOKIE, WORKSPACE_COOKIE, WORKSPACE_STATE_COOKIE
from app.services.singleflight import SingleFlight

REFRESH_AHEAD = 0.8  # of a cached route's time, after which one caller refreshes it


class Route:
    """What the relay needs of a workspace row."""

    __slots__ = ("endpoint", "generation", "id", "loaded_at", "name", "owner_id", "reason", "server_id", "state")

    def __init__(self, ws: Workspace | None, workspace_id: str) -> None:
        self.id = workspace_id
        self.owner_id = ws.owner_id if ws else None
        self.state = ws.state if ws else WorkspaceState.DELETED
        self.reason = ws.state_reason if ws else None
        self.name = ws.name if ws else ""
        self.server_id = ws.server_id if ws else None
        self.generation = ws.generation if ws else 0
        self.endpoint = (
            parse_endpoint(ws.endpoint) if ws and ws.state == WorkspaceState.RUNNING and ws.endpoint else None
        )
        self.loaded_at = time.monotonic()

    @property
    def exists(self) -> bool:
        """False for an unknown (or deleted) workspace."""
        return self.owner_id is not None


def parse_endpoint(endpoint: str) -> tuple[str, int] | None:
    """``host:port`` (or ``[v6]:port``) as a tuple; None when malformed."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class RouteCache:
    """Workspace routes by id: cached ``ttl`` seconds (``idle_ttl`` for non-running states); concurrent misses
    for one id share one database read."""

    def __init__(self, sessionmaker: SessionMaker, *, ttl: float = 5.0, idle_ttl: float = 1.0) -> None:
        self._sessionmaker = sessionmaker
        self.ttl = ttl
        self.idle_ttl = idle_ttl
        self._routes: dict[str, Route] = {}
        self._reads: SingleFlight[str, Route] = SingleFlight()

    async def get(self, workspace_id: str) -> Route:
        """The route of ``workspace_id`` (``exists`` is False for unknown ids).

        Refreshed ahead: in the last fifth of its time, the first caller reads it again while the others go
        on with the cached route, so a busy workspace's requests never all wait for one read.
        """
        route = self._routes.get(workspace_id)
        if route is not None:
            ttl = self.ttl if route.endpoint else self.idle_ttl
            age = time.monotonic() - route.loaded_at
            if age < ttl and (age < ttl * REFRESH_AHEAD or self._reads.running(workspace_id)):
                return route
        return await self._reads.run(workspace_id, lambda: self._read(workspace_id))

    async def load(self, workspace_id: str) -> Route:
        """Read the route from the database now (or share a read that ends after this call began)."""
        asked = time.monotonic()
        return await self._reads.run(workspace_id, lambda: self._read(workspace_id), lambda r: r.loaded_at >= asked)

    async def _read(self, workspace_id: str) -> Route:
        async with self._sessionmaker() as session:
            ws = await session.get(Workspace, workspace_id)
        route = Route(ws, workspace_id)
        if len(self._routes) > 50_000:
            self._routes.clear()
        self._routes[workspace_id] = route
        return route

    def forget(self, workspace_id: str) -> None:
        """Drop the cached route (its lifecycle changed)."""
        self._routes.pop(workspace_id, None)

    def clear(self) -> None:
        """Drop every cached route (events may have been missed)."""
        self._routes.clear()


_HUB_COOKIES = frozenset({SESSION_COOKIE.encode(), WORKSPACE_COOKIE.encode(), WORKSPACE_STATE_COOKIE.encode()})


def strip_session_cookie(value: bytes) -> bytes:
    """A ``Cookie`` header without the hub's session, workspace and entry-state cookies (b"" when nothing else is
    left)."""
    if b"codehub_" not in value:
        return value
    kept = [part for part in value.split(b";") if part.strip().partition(b"=")[0] not in _HUB_COOKIES]
    return b";".join(kept).strip()


def without_access_token(query_string: bytes) -> bytes:
    """The query string minus ``access_token`` (other parameters kept in order)."""
    if b"access_token=" not in query_string:
        return query_string
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k != "access_token"]).encode("latin-1")


def rewrite_location(value: bytes, prefix: bytes, host: bytes, upstream: str) -> bytes:
    """Keep redirects under ``/w/{id}/``: absolute paths get the prefix, absolute URLs naming the IDE's
    address or the public host are pointed at the public host with the prefix; relative ones stay."""
    if value.startswith(b"/") and not value.startswith(b"//"):
        return value if value == prefix or value.startswith(prefix + b"/") else prefix + value
    text = value.decode("latin-1")
    try:
        parts = urlsplit(text)
    except ValueError:
        return value
    if not parts.netloc:
        return value
    public = host.decode("latin-1")
    if parts.netloc not in (upstream, public):
        return value
    path = parts.path or "/"
    prefix_text = prefix.decode()
    if not (path == prefix_text or path.startswith(prefix_text + "/")):
        path = prefix_text + path
    return urlunsplit((parts.scheme, public, path, parts.query, parts.fragment)).encode("latin-1")


def rewrite_set_cookie(value: bytes, prefix: bytes) -> bytes | None:
    """Scope an IDE cookie to ``/w/{id}/`` (its Path prefixed, its Domain removed); None drops it (the IDE
    may not set the hub's session cookie)."""
    parts = [p.strip() for p in value.split(b";")]
    name = parts[0].partition(b"=")[0].strip()
    if name in _HUB_COOKIES:
        return None
    out = [parts[0]]
    for attr in parts[1:]:
        key, _, val = attr.partition(b"=")
        lowered = key.strip().lower()
        if lowered == b"domain":
            continue
        if lowered == b"path":
            path = val.strip() or b"/"
            if not path.startswith(b"/"):
                path = b"/"
            if not (path == prefix or path.startswith(prefix + b"/")):
                path = prefix + path
            attr = b"Path=" + path
        out.append(attr)
    return b"; ".join(out)
