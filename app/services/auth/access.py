"""Identity and access, for every door of the hub (API, relay, terminal), on raw ASGI scopes and headers.

- ``Credentials``: the hub token a request carries: ``Authorization: Bearer chub_…``, then the
  ``codehub_session`` cookie. A Bearer value without the token prefix is not the hub's (an app inside a
  workspace may use its own) and is left alone. ``identify`` takes the first of them that proves someone,
  falling back to the cookie. A token in the URL (``?access_token=``) is no credential: links leak through
  history, ``Referer`` and logs, and one that logged its visitor in would be a forced login.
- The origin rule (``cross_origin_refusal``): the browser adds the session cookie by itself, even to a
  request another site makes, so a cookie-authenticated unsafe request (POST, PUT, PATCH, DELETE, a
  WebSocket upgrade) must come from the hub's own origin (``from_own_origin``). Bearer tokens are no
  ambient credential and are not subject to it.
- The session cookie: its name and attributes (``session_cookie_attributes``) and the ``Set-Cookie`` value
  that logs a browser in (``session_set_cookie``).
- ``TokenCache``: the one in-process cache of verified tokens. Revoking a token, ending a session or
  changing a user drops the entries at once, and no lookup that started before the change refills them;
  other hub processes learn through ``app.services.auth.revocations``.
- ``may_access``: the owner of a thing, or an admin. ``workspace_level``: what a principal may do on a
  workspace (``Level``): the owner or an admin manages it, a grantee uses or views it (see docs/sharing.md).
- ``audit_entry``: an audit entry pre-filled from the request (caller, request id, client address).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import msgspec

from app.errors import Forbidden
from app.services.audit.log import AuditEntry
from app.services.singleflight import SingleFlight
from app.settings import Settings

TOKEN_PREFIX = "chub_"
SESSION_COOKIE = "codehub_session"
WORKSPACE_TOKEN_PREFIX = "chws_"  # a workspace cookie's value: never a hub credential
WORKSPACE_TOKEN_KIND = "workspace"
WORKSPACE_COOKIE = "codehub_ws"
WORKSPACE_STATE_COOKIE = "codehub_ws_state"  # a browser's entry in progress on a workspace host
MAX_CACHED_TOKENS = 10_000
REFRESH_AHEAD = 0.8  # of a cached token's time, after which one caller looks it up again
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_NEXT_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Headers = Iterable[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the user and the token (or session) that proved it."""

    user_id: int
    username: str
    role: str
    token_id: str
    token_kind: str
    workspace_id: str | None = None  # set for a workspace cookie: it proves someone on that workspace's host only

    @property
    def is_admin(self) -> bool:
        """True for admins."""
        return self.role == "admin"


def may_access(principal: Principal, owner_id: int | None) -> bool:
    """True when ``principal`` owns the thing (``owner_id``) or is an admin."""
    return principal.is_admin or (owner_id is not None and owner_id == principal.user_id)


class Level(IntEnum):
    """What a principal may do on a workspace, each level including the ones below it."""

    VIEW = 1  # files read-only, logs, status, the workspace's events
    USE = 2  # the IDE, the terminal, files read and write, exec
    MANAGE = 3  # start, stop, delete, settings, patches, grants: the owner or an admin


GRANT_LEVELS: dict[str, Level] = {"view": Level.VIEW, "use": Level.USE}


def workspace_level(principal: Principal, owner_id: int | None, granted: str | None) -> Level | None:
    """What ``principal`` may do on a workspace of ``owner_id`` shared with them at ``granted`` (a grant's level,
    or None): MANAGE for the owner or an admin, the grant's level for a grantee, None for anyone else."""
    if may_access(principal, owner_id):
        return Level.MANAGE
    return GRANT_LEVELS.get(granted) if granted else None


class IdeAccess(StrEnum):
    """How a principal may reach a workspace's IDE or terminal, whose pages run on the hub's origin."""

    OWNER = "owner"
    IMPERSONATE = "impersonate"  # an admin, allowed by settings: logged and audited
    REFUSED = "refused"  # an admin, not allowed: told so
    SHARED = "shared"  # a grantee with ``use`` (subdomain mode only: the IDE runs on its own origin)
    HIDDEN = "hidden"  # anyone else: the workspace does not exist for them


def ide_access(
    principal: Principal, owner_id: int | None, *, admin_path_access: bool, granted: str | None = None
) -> IdeAccess:
    """Only the owner opens an IDE or terminal; an admin only when ``admin_path_access`` allows it; a grantee
    with ``use`` (``granted``, only ever passed in subdomain mode).

    Stricter than ``may_access`` on purpose: a workspace page served on the hub's origin runs with its
    visitor's cookie, so an admin who opens it hands the workspace's owner an admin session.
    """
    if owner_id is not None and owner_id == principal.user_id:
        return IdeAccess.OWNER
    if owner_id is not None and not principal.is_admin and GRANT_LEVELS.get(granted or "") == Level.USE:
        return IdeAccess.SHARED
    if owner_id is None or not principal.is_admin:
        return IdeAccess.HIDDEN
    return IdeAccess.IMPERSONATE if admin_path_access else IdeAccess.REFUSED


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


class Credentials:
    """The hub token a request carries and where it came from (``bearer`` or ``cookie``).

    ``cookie`` is the session cookie the request carried, even when ``token`` is the Bearer one: the relay
    strips it before a request reaches a workspace. ``identify`` sets ``proven_by`` to the source of the
    token that proved someone (the cookie when a stale Bearer token fell back to it).
    """

    __slots__ = ("cookie", "proven_by", "source", "token")

    def __init__(self, headers: Headers) -> None:
        self.token: str | None = None
        self.source = ""
        self.cookie: str | None = None
        self.proven_by = ""
        for key, value in headers:
            if key == b"cookie" and SESSION_COOKIE.encode() in value:
                self.cookie = self.cookie or _session_cookie(value.decode("latin-1"))
            elif key == b"authorization" and self.token is None:
                scheme, _, raw = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and raw.strip().startswith(TOKEN_PREFIX):
                    self.token, self.source = raw.strip(), "bearer"
        if self.token is None and self.cookie:
            self.token, self.source = self.cookie, "cookie"

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> Credentials:
        """The credentials of an ASGI HTTP or WebSocket scope."""
        return cls(scope.get("headers", []))

    @property
    def candidates(self) -> tuple[str, ...]:
        """The tokens to try, in order: the chosen one, then the session cookie when it differs."""
        if self.token is None:
            return ()
        if self.cookie and self.cookie != self.token:
            return self.token, self.cookie
        return (self.token,)


def _session_cookie(cookie_header: str) -> str | None:
    """The session cookie's value. Tokens are URL-safe, so a plain split is enough (and several times faster
    than ``SimpleCookie``, which would parse the IDE's cookies on every relayed request too)."""
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value.strip('"')
    return None


class TokenVerifier(Protocol):
    """What ``identify`` asks: the principal a raw token proves, from the cache alone or looked up."""

    def cached(self, raw: str) -> Principal | None:
        """The principal ``raw`` proves if the cache holds it, else None (without looking it up)."""
        ...

    async def principal_of(self, raw: str) -> Principal | None:
        """The principal ``raw`` proves, or None."""
        ...


async def identify(credentials: Credentials, verifier: TokenVerifier) -> Principal | None:
    """Who the credentials prove: the first candidate token that proves someone, or None (and where that
    token came from, in ``credentials.proven_by``). A cached token is answered without a coroutine: this runs
    on every relayed request."""
    for token in credentials.candidates:
        principal = verifier.cached(token)
        if principal is None:
            principal = await verifier.principal_of(token)
        if principal is not None:
            credentials.proven_by = credentials.source if token == credentials.token else "cookie"
            return principal
    return None


def _netloc(scheme: str, host: str) -> str:
    """``host[:port]`` lower-cased, with the scheme's default port dropped."""
    host = host.lower()
    if host.endswith("]"):
        return host
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and DEFAULT_PORTS.get(scheme) == int(port):
        return name
    return host


def origin_allowed(origin: bytes, host: bytes | None, settings: Settings) -> bool:
    """True when ``origin`` (an ``Origin`` header) is the hub's own or one of ``allowed_origins``.

    The hub's own is ``public_url`` when set, else the request's ``Host`` (compared as host and port: behind a
    TLS-terminating proxy the request's scheme is not the browser's). ``null`` and everything else are foreign.
    """
    try:
        parts = urlsplit(origin.decode("latin-1").strip().rstrip("/"))
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
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


def from_own_origin(headers: Headers, settings: Settings) -> bool:
    """True unless the browser says the request comes from another origin: ``Origin`` when present (see
    ``origin_allowed``), else ``Sec-Fetch-Site`` (``same-origin``, or ``none`` for what the user typed).

    A request with neither comes from no browser (browsers send ``Origin`` on every unsafe request and
    upgrade), so no ambient cookie rides on it unasked.
    """
    origin = header(headers, b"origin")
    if origin is not None:
        return origin_allowed(origin, header(headers, b"host"), settings)
    site = header(headers, b"sec-fetch-site")
    return site is None or site in (b"same-origin", b"none")


def cross_origin_refusal(scope: Mapping[str, Any], credentials: Credentials, settings: Settings) -> Forbidden | None:
    """The 403 for a request the session cookie authenticated (after ``identify``) that could change
    something (an unsafe method or a WebSocket upgrade) and comes from another origin; None when it may pass."""
    if credentials.proven_by != "cookie":
        return None
    if scope.get("type") != "websocket" and scope.get("method") not in UNSAFE_METHODS:
        return None
    if from_own_origin(scope.get("headers", []), settings):
        return None
    return cross_origin_error()


def safe_next(target: str | None) -> str:
    """Where to send a browser after signing in: ``target`` when it is a path on the hub's own origin (one
    leading ``/``, no ``//`` or backslash anywhere, no control characters, also once percent-decoded), else ``/``.
    """
    if not target or len(target) > MAX_NEXT_LENGTH:
        return "/"
    for form in (target, unquote(target)):
        if not form.startswith("/") or "//" in form or "\\" in form:
            return "/"
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in form):
            return "/"
    return target


def cross_origin_error() -> Forbidden:
    """The refusal of a request from another origin."""
    return Forbidden("this request must come from the hub's own origin", code="cross_origin")


@dataclass(frozen=True, slots=True)
class CookieAttributes:
    """The name and attributes of the session cookie (the value is the session token)."""

    name: str
    path: str
    max_age: int
    http_only: bool
    same_site: Literal["lax", "strict", "none"]
    secure: bool


def session_cookie_attributes(settings: Settings, *, ending: bool = False) -> CookieAttributes:
    """The session cookie's attributes; ``ending`` ones make the browser drop it (logout)."""
    return CookieAttributes(
        name=SESSION_COOKIE,
        path="/",
        max_age=0 if ending else int(settings.session_ttl),
        http_only=True,
        same_site="lax",
        secure=settings.cookie_secure,
    )


def session_set_cookie(settings: Settings, raw: str) -> bytes:
    """The ``Set-Cookie`` header value that logs the browser in with session token ``raw``."""
    spec = session_cookie_attributes(settings)
    parts = [f"{spec.name}={raw}", f"Path={spec.path}", f"Max-Age={spec.max_age}"]
    if spec.http_only:
        parts.append("HttpOnly")
    parts.append(f"SameSite={spec.same_site.capitalize()}")
    if spec.secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


class Revocation(msgspec.Struct, frozen=True):
    """Tokens that stopped proving anyone: one token (revoked, or a session ended) or all of a user's
    (disabled, role or password changed)."""

    token_id: str | None = None
    user_id: int | None = None


class TokenCache:
    """Principals of verified tokens by token digest, for ``ttl`` seconds (``ttl <= 0`` caches nothing).

    Concurrent lookups of one token share one (``SingleFlight``). Every revocation bumps an epoch: a lookup
    that started before it neither fills the cache nor answers a caller that arrived after it.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._known: dict[str, tuple[float, Principal]] = {}
        self._epoch = 0
        self._lookups: SingleFlight[str, tuple[int, Principal | None]] = SingleFlight()

    def peek(self, digest: str) -> Principal | None:
        """The cached principal of token ``digest`` while it needs no refresh, else None (no lookup)."""
        known = self._known.get(digest)
        if known is not None and known[0] - time.monotonic() > self.ttl * (1 - REFRESH_AHEAD):
            return known[1]
        return None

    async def get(self, digest: str, lookup: Callable[[str], Awaitable[Principal | None]]) -> Principal | None:
        """The principal token ``digest`` proves (``lookup`` asks the database on a miss), or None.

        Refreshed ahead: in the last fifth of an entry's time, the first caller looks it up again while the
        others go on with the cached principal (revocations still drop it at once).
        """
        known = self._known.get(digest)
        if known is not None:
            left = known[0] - time.monotonic()
            if left > 0 and (left > self.ttl * (1 - REFRESH_AHEAD) or self._lookups.running(digest)):
                return known[1]
        asked = self._epoch

        async def load() -> tuple[int, Principal | None]:
            epoch = self._epoch
            principal = await lookup(digest)
            if principal is not None and epoch == self._epoch and self.ttl > 0:
                if len(self._known) >= MAX_CACHED_TOKENS:
                    self._known.clear()
                self._known[digest] = (time.monotonic() + self.ttl, principal)
            return epoch, principal

        _, principal = await self._lookups.run(digest, load, lambda result: result[0] >= asked)
        return principal

    def apply(self, revocation: Revocation) -> None:
        """Drop what ``revocation`` names."""
        self._epoch += 1
        self._known = {
            digest: entry
            for digest, entry in self._known.items()
            if entry[1].token_id != revocation.token_id and entry[1].user_id != revocation.user_id
        }

    def clear(self) -> None:
        """Drop every entry (revocations may have been missed)."""
        self._epoch += 1
        self._known.clear()


def request_id_of(scope: Mapping[str, Any]) -> str:
    """The request id ``RequestContextMiddleware`` stored in the scope ("" outside the API)."""
    state = scope.get("state")
    return str(state.get("request_id", "")) if state else ""


def audit_entry(scope: Mapping[str, Any], action: str, principal: Principal | None = None, **fields: Any) -> AuditEntry:
    """An audit entry pre-filled with the caller, the request id and the client address of ``scope``."""
    client = scope.get("client")
    return AuditEntry(
        action=action,
        actor_id=principal.user_id if principal else None,
        actor_name=principal.username if principal else None,
        request_id=request_id_of(scope) or None,
        client_addr=client[0] if client else None,
        **fields,
    )
