"""Who may reach a workspace through the relay, and where its IDE answers.

- Credentials: ``Authorization: Bearer``, ``?access_token=`` (exchanged for the session cookie on page
  loads) or the ``codehub_session`` cookie. They are stripped before a request goes to the IDE: the
  workspace runs its owner's code and must never see a visitor's (an admin's) session.
- ``RouteCache``: owner, state and endpoint per workspace, read from the database at most every few seconds
  and dropped at once when a lifecycle event for the workspace arrives (``forget``).
- ``origin_allowed``: WebSocket upgrades must come from the hub's own origin (``public_url`` or the request's
  Host) or one of ``allowed_origins`` — cross-site WebSocket hijacking rides on cookies otherwise.
- ``rewrite_location`` / ``rewrite_set_cookie``: what the IDE sends back stays under ``/w/{id}/``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from app.db import SessionMaker
from app.errors import DomainError
from app.models import Workspace, WorkspaceState
from app.services.auth.users import TOKEN_PREFIX, Principal
from app.settings import Settings

SESSION_COOKIE = "codehub_session"  # the name app.controllers.middleware sets at login
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Route:
    """What the relay needs of a workspace row."""

    __slots__ = ("endpoint", "id", "loaded_at", "name", "owner_id", "reason", "state")

    def __init__(self, ws: Workspace | None, workspace_id: str) -> None:
        self.id = workspace_id
        self.owner_id = ws.owner_id if ws else None
        self.state = ws.state if ws else WorkspaceState.DELETED
        self.reason = ws.state_reason if ws else None
        self.name = ws.name if ws else ""
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
        self._loading: dict[str, anyio.Event] = {}

    async def get(self, workspace_id: str) -> Route:
        """The route of ``workspace_id`` (``exists`` is False for unknown ids)."""
        route = self._routes.get(workspace_id)
        if route is not None:
            ttl = self.ttl if route.endpoint else self.idle_ttl
            if time.monotonic() - route.loaded_at < ttl:
                return route
        waiting = self._loading.get(workspace_id)
        if waiting is not None:
            await waiting.wait()
            route = self._routes.get(workspace_id)
            if route is not None:
                return route
        return await self.load(workspace_id)

    async def load(self, workspace_id: str) -> Route:
        """Read the route from the database now."""
        done = self._loading[workspace_id] = anyio.Event()
        try:
            async with self._sessionmaker() as session:
                ws = await session.get(Workspace, workspace_id)
            route = Route(ws, workspace_id)
            if len(self._routes) > 50_000:
                self._routes.clear()
            self._routes[workspace_id] = route
            return route
        finally:
            done.set()
            if self._loading.get(workspace_id) is done:
                del self._loading[workspace_id]

    def forget(self, workspace_id: str) -> None:
        """Drop the cached route (its lifecycle changed)."""
        self._routes.pop(workspace_id, None)

    def clear(self) -> None:
        """Drop every cached route (events may have been missed)."""
        self._routes.clear()


class PrincipalCache:
    """Tokens the relay has checked, for ``ttl`` seconds (the auth service's own cache time, so revocation
    takes as long as everywhere else). Concurrent first uses of one token share one check: when the entry
    of a busy session expires, 50 requests in flight must not become 50 database reads (that was the
    relay's p99 in ``bench/relay.py``)."""

    def __init__(self, resolve: Callable[[str], Awaitable[Principal]], ttl: float) -> None:
        self._resolve = resolve
        self.ttl = ttl
        self._known: dict[str, tuple[float, Principal | None]] = {}
        self._loading: dict[str, anyio.Event] = {}

    async def get(self, token: str) -> Principal | None:
        """The principal ``token`` proves, or None when it proves nothing."""
        key = token
        known = self._known.get(key)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        waiting = self._loading.get(key)
        if waiting is not None:
            await waiting.wait()
            known = self._known.get(key)
            if known is not None:
                return known[1]
        done = self._loading[key] = anyio.Event()
        try:
            try:
                principal: Principal | None = await self._resolve(token)
            except DomainError:
                principal = None
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[key] = (time.monotonic() + self.ttl, principal)
            return principal
        finally:
            done.set()
            if self._loading.get(key) is done:
                del self._loading[key]


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


class Credentials:
    """The hub token a request carries and where it came from (``bearer``, ``query`` or ``cookie``)."""

    __slots__ = ("cookie", "query", "source", "token")

    def __init__(self, headers: list[tuple[bytes, bytes]], query_string: bytes) -> None:
        self.token: str | None = None
        self.source = ""
        self.query: str | None = None
        self.cookie: str | None = None
        for key, value in headers:
            if key == b"cookie" and SESSION_COOKIE.encode() in value:
                self.cookie = self.cookie or _session_cookie(value.decode("latin-1"))
            elif key == b"authorization" and self.token is None:
                scheme, _, raw = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and raw.strip().startswith(TOKEN_PREFIX):
                    self.token, self.source = raw.strip(), "bearer"
        if b"access_token=" in query_string:
            for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
                if key == "access_token":
                    self.query = value
                    break
        if self.token is None and self.query:
            self.token, self.source = self.query, "query"
        if self.token is None and self.cookie:
            self.token, self.source = self.cookie, "cookie"


def _session_cookie(cookie_header: str) -> str | None:
    """The session cookie's value. Tokens are URL-safe, so a plain split is enough (and several times faster
    than ``SimpleCookie``, which would parse the IDE's cookies on every relayed request too)."""
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value.strip('"')
    return None


def strip_session_cookie(value: bytes) -> bytes:
    """A ``Cookie`` header without the hub's session cookie (b"" when nothing else is left)."""
    if SESSION_COOKIE.encode() not in value:
        return value
    kept = [part for part in value.split(b";") if part.strip().partition(b"=")[0] != SESSION_COOKIE.encode()]
    return b";".join(kept).strip()


def without_access_token(query_string: bytes) -> bytes:
    """The query string minus ``access_token`` (other parameters kept in order)."""
    if b"access_token=" not in query_string:
        return query_string
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k != "access_token"]).encode("latin-1")


def session_cookie(settings: Settings, raw: str) -> bytes:
    """The ``Set-Cookie`` value that logs the browser in (same attributes as ``POST /api/auth/login``)."""
    parts = [f"{SESSION_COOKIE}={raw}", "Path=/", f"Max-Age={int(settings.session_ttl)}", "HttpOnly", "SameSite=Lax"]
    if settings.cookie_secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def _netloc(scheme: str, host: str) -> str:
    """``host[:port]`` lower-cased, with the scheme's default port dropped."""
    host = host.lower()
    if host.endswith("]"):
        return host
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and DEFAULT_PORTS.get(scheme) == int(port):
        return name
    return host


def origin_allowed(origin: bytes | None, host: bytes | None, settings: Settings) -> bool:
    """True when a WebSocket upgrade's ``Origin`` is the hub's own or explicitly allowed.

    A missing Origin is allowed (browsers always send one on upgrades; CLI clients do not, and they
    carry no ambient cookies to abuse). ``null`` and everything foreign are refused.
    """
    if origin is None:
        return True
    text = origin.decode("latin-1").strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    given = f"{parts.scheme}://{_netloc(parts.scheme, parts.netloc)}"
    allowed = {o.rstrip("/").lower() for o in settings.allowed_origins}
    if settings.public_url:
        public = urlsplit(settings.public_url)
        allowed.add(f"{public.scheme}://{_netloc(public.scheme, public.netloc)}")
        return given in allowed
    if given in allowed:
        return True
    return host is not None and _netloc(parts.scheme, host.decode("latin-1")) == _netloc(parts.scheme, parts.netloc)


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
    if name == SESSION_COOKIE.encode():
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
