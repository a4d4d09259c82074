"""The relay: every request under ``/w/{id}/…`` goes to that workspace's IDE (code-server), HTTP and WebSocket.

``WorkspaceFront`` wraps the Litestar app's ASGI handler (``app.factory``'s lifespan installs it once the
relay exists) and takes ``/w/…`` and ``/ws/workspaces/…`` before Litestar routes anything. Measured with
a trivial handler on this machine, an ``asgi`` mount at ``/w`` serves ~30 % fewer requests per second
than the same handler in front of the router, and with the request-context middleware (one access-log
line per request) ~75 % fewer; the relay needs neither (it resolves credentials itself). Everything else
passes through untouched.

Per request: credentials (Bearer, session cookie; the sign-in page otherwise) → the workspace's route
(cached; owner and admins only, 404 for everyone else) → the origin rule of ``app.services.auth.access``
for cookie-authenticated unsafe requests and upgrades → running: forward (``relay_http`` / ``relay_ws``);
not running: a page navigation starts it and shows the starting page, a failed one shows why, anything
else gets 503. The IDE sees the client's ``Host`` and ``Origin`` (code-server's origin check compares them),
``X-Forwarded-For/Proto/Host/Prefix``, the path without ``/w/{id}``, and never the hub's credentials
(the headers both ways: ``app.streams.relay.shaping``). ``app.streams.relay.follow`` keeps the route cache,
counters and open connections in line with lifecycle and grant events.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any
from urllib.parse import urlsplit

from app.errors import DomainError, send_error
from app.models import WorkspaceState
from app.services.auth.access import (
    Credentials,
    IdeAccess,
    Principal,
    audit_entry,
    cross_origin_refusal,
    header,
    ide_access,
    identify,
)
from app.streams.events.direct_http import direct_writer
from app.streams.net.pool import ClientGone, UpstreamBroken, UpstreamError, UpstreamPool
from app.streams.relay import pages
from app.streams.relay.access import Route, RouteCache, without_access_token
from app.streams.relay.deps import RelayDeps
from app.streams.relay.hosts import WorkspaceHosts
from app.streams.relay.http import Exchange, Receive, Send, request_body_kind
from app.streams.relay.presence import Presence
from app.streams.relay.sessions import Sessions
from app.streams.relay.shaping import response_headers, upstream_headers
from app.streams.relay.stats import Activity, RelayStats
from app.streams.relay.subdomain import TICKET_PATH, SubdomainFront
from app.streams.relay.terminal import TerminalDeps, serve_terminal
from app.streams.relay.ws import WebSocketRelay, deny

log = logging.getLogger(__name__)

WORKSPACE_ID_RE = re.compile(rb"[a-z0-9]{1,16}")
IMPERSONATION_NOTE_EVERY = 300.0  # seconds between audit entries of one admin in one workspace


class Relay:
    """The relay of one hub process: upstream pool, route cache, counters."""

    def __init__(self, deps: RelayDeps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.pool = UpstreamPool()
        self.routes = RouteCache(deps.sessionmaker)
        self.ide_secrets = deps.lifecycle.ide_secrets
        self.stats = RelayStats()
        self._impersonations: dict[tuple[int, str], float] = {}
        self.activity = Activity(deps.lifecycle.touch, traffic=self.stats.with_traffic)
        self.sessions = Sessions()
        self.presence = Presence(self.sessions, deps.redis, deps.settings.redis_prefix, deps.settings.presence_ttl)
        public = urlsplit(deps.settings.public_url) if deps.settings.public_url else None
        self.public_scheme = public.scheme if public else None
        domain = deps.settings.workspace_domain
        self.subdomain = SubdomainFront(self, WorkspaceHosts(domain, deps.settings.public_url)) if domain else None

    async def hold(self) -> None:
        """Live as long as the app (expiring requests the IDE leaves unanswered); close the pool at shutdown."""
        try:
            await self.pool.expire()
        finally:
            self.pool.close()

    # -- entry ---------------------------------------------------------------------------------------------

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one HTTP request or WebSocket under ``/w/``."""
        is_ws = scope["type"] == "websocket"
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        slash = raw_path.find(b"/", 3)
        ws_id = raw_path[3:] if slash < 0 else raw_path[3:slash]
        if not WORKSPACE_ID_RE.fullmatch(ws_id):
            await (deny(scope, send, 404, "no such workspace") if is_ws else pages.not_found(send))
            return
        if slash < 0 and not is_ws:
            query = scope.get("query_string", b"")
            location = raw_path + b"/" + (b"?" + query if query else b"")
            await pages.redirect(send, location, status=302 if scope["method"] in ("GET", "HEAD") else 308)
            return
        rest = raw_path[slash:] if slash >= 0 else b"/"
        workspace_id = ws_id.decode()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        creds = Credentials.of(scope)
        principal = await identify(creds, self.deps.auth)
        if principal is None:
            if is_ws:
                await deny(scope, send, 401, "sign in first")
            else:
                query = without_access_token(scope.get("query_string", b""))
                await pages.sign_in(send, (raw_path + (b"?" + query if query else b"")).decode("latin-1"))
            return
        route = await self.routes.get(workspace_id)
        if not await self._may_open(scope, send, principal, route, is_ws):
            return
        refusal = cross_origin_refusal(scope, creds, self.settings)
        if refusal is not None:
            if is_ws:
                self.stats.of(route.id, route.server_id).failed_upgrades += 1
                await deny(scope, send, refusal.status, f"{refusal.code}: {refusal.detail}")
            else:
                await send_error(send, refusal.status, refusal.to_body())
            return
        if is_ws:
            await self.relay_websocket(scope, receive, send, route, rest, headers, creds, b"/w/" + route.id.encode())
            return
        if route.endpoint is None:
            route = await self.routes.load(workspace_id)
            if route.endpoint is None:
                await self.not_running(scope, send, route, principal)
                return
        await self.relay_http(scope, receive, send, route, rest, headers, creds, b"/w/" + route.id.encode())

    async def _may_open(
        self, scope: dict[str, Any], send: Any, principal: Principal, route: Route, is_ws: bool
    ) -> bool:
        """Owner only; an admin when settings allow it (audited as impersonation), else a clear refusal."""
        access = ide_access(principal, route.owner_id, admin_path_access=self.settings.admin_path_access)
        if access == IdeAccess.OWNER:
            return True
        if access == IdeAccess.IMPERSONATE:
            await self.note_impersonation(scope, principal, route)
            return True
        if access == IdeAccess.REFUSED:
            await (deny(scope, send, 403, "not your workspace") if is_ws else pages.not_yours(send))
        else:
            await (deny(scope, send, 404, "no such workspace") if is_ws else pages.not_found(send))
        return False

    async def note_impersonation(self, scope: dict[str, Any], principal: Principal, route: Route) -> None:
        """Log and audit an admin opening someone else's workspace: once per admin and workspace a while, not
        once for each of the hundred requests an IDE page load makes."""
        key = (principal.user_id, route.id)
        now = time.monotonic()
        if now - self._impersonations.get(key, -IMPERSONATION_NOTE_EVERY) < IMPERSONATION_NOTE_EVERY:
            return
        self._impersonations[key] = now
        log.warning("admin %s opened workspace %s of user %s", principal.username, route.id, route.owner_id)
        entry = audit_entry(scope, "workspace.impersonate", principal, workspace_id=route.id, target=route.name)
        await self.deps.audit.record(entry)

    def _upstream_headers(
        self, scope: dict[str, Any], headers: list[tuple[bytes, bytes]], creds: Credentials, route: Route, prefix: bytes
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        cookie = self.ide_secrets.cookie(route.id, route.generation)
        return upstream_headers(scope, headers, creds, prefix, ide_cookie=cookie, public_scheme=self.public_scheme)

    # -- HTTP ----------------------------------------------------------------------------------------------

    async def relay_http(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        route: Route,
        rest: bytes,
        headers: list[tuple[bytes, bytes]],
        creds: Credentials,
        prefix: bytes,
    ) -> None:
        assert route.endpoint is not None
        up_headers, host = self._upstream_headers(scope, headers, creds, route, prefix)
        if not host:
            host = f"{route.endpoint[0]}:{route.endpoint[1]}".encode()
        query = without_access_token(scope.get("query_string", b""))
        body_kind = request_body_kind(headers)
        method = scope["method"]
        parts = [method.encode(), b" ", rest, b"?" + query if query else b"", b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for name, value in up_headers:
            parts += (name, b": ", value, b"\r\n")
        if body_kind == "chunked":
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        counters = self.stats.of(route.id, route.server_id)
        counters.http_requests += 1
        counters.http_in_flight += 1
        writer = direct_writer(scope)
        corked = writer.corked if writer is not None else nullcontext
        exchange = Exchange(self.pool, route.endpoint, method, b"".join(parts), body_kind, corked)
        upstream_netloc = f"{route.endpoint[0]}:{route.endpoint[1]}"
        try:
            await exchange.run(receive, send, lambda _s, h: response_headers(h, prefix, host, upstream_netloc))
        except UpstreamError as exc:
            counters.upstream_errors += 1
            self.routes.forget(route.id)
            await pages.bad_gateway(send, exc.detail, status=504 if exc.timeout else 502)
        except ClientGone:
            pass
        except UpstreamBroken as exc:
            counters.upstream_errors += 1
            log.warning("relay to workspace %s aborted: %s", route.id, exc)
            raise
        finally:
            counters.http_in_flight -= 1
            counters.bytes_up += exchange.bytes_up
            counters.bytes_down += exchange.bytes_down

    async def not_running(self, scope: dict[str, Any], send: Any, route: Route, principal: Principal) -> None:
        """A page load starts a stopped workspace and shows the starting page; sub-requests get 503."""
        headers = scope["headers"]
        accept = header(headers, b"accept") or b""
        navigation = scope["method"] == "GET" and (
            header(headers, b"sec-fetch-mode") == b"navigate" or b"text/html" in accept
        )
        if not navigation:
            await pages.not_running(send, route.state)
            return
        if route.state == WorkspaceState.FAILED:
            await pages.failed(send, route.id, route.name, route.reason)
            return
        note = ""
        if route.state in (WorkspaceState.STOPPED, WorkspaceState.CREATED):
            note = await self._auto_start(scope, route, principal)
        await pages.starting(send, route.id, route.name, route.state, note)

    async def _auto_start(self, scope: dict[str, Any], route: Route, principal: Principal) -> str:
        try:
            ws = await self.deps.lifecycle.start(principal, route.id)
        except DomainError as exc:
            return exc.detail
        self.routes.forget(route.id)
        entry = audit_entry(
            scope, "workspace.start", principal, workspace_id=route.id, target=ws.name, details={"via": "relay"}
        )
        try:
            await self.deps.audit.record(entry)
        except Exception:  # the start happened; a failed audit write must not hide it
            log.exception("audit of the relay start of %s failed", route.id)
        return ""

    # -- WebSocket -----------------------------------------------------------------------------------------

    async def relay_websocket(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        route: Route,
        rest: bytes,
        headers: list[tuple[bytes, bytes]],
        creds: Credentials,
        prefix: bytes,
    ) -> None:
        counters = self.stats.of(route.id, route.server_id)
        if route.endpoint is None:
            route = await self.routes.load(route.id)
            if route.endpoint is None:
                counters.failed_upgrades += 1
                await deny(scope, send, 503, f"the workspace is {route.state}")
                return
        up_headers, host = self._upstream_headers(scope, headers, creds, route, prefix)
        query = without_access_token(scope.get("query_string", b""))
        target = (rest + (b"?" + query if query else b"")).decode("latin-1")
        relay = WebSocketRelay(scope, receive, send, counters)
        host = host or f"{route.endpoint[0]}:{route.endpoint[1]}".encode()
        await relay.run(route.endpoint, target, up_headers, host, prefix)


class WorkspaceFront:
    """ASGI wrapper: ``/w/…`` to the relay, ``/ws/workspaces/…`` to the terminal, the rest to ``app``. In
    subdomain mode, hosts under the workspace domain go to ``SubdomainFront`` (one dict lookup on ``Host``), and
    on the hub's host ``/w/…`` and ``/_codehub/ticket`` are the entry onto them."""

    def __init__(self, app: Callable[..., Awaitable[None]], relay: Relay) -> None:
        self.app = app
        self.relay = relay
        self.terminal = TerminalDeps(relay.deps, relay.stats, relay.activity, relay.sessions)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Route one ASGI connection."""
        path = scope.get("path", "")
        subdomain = self.relay.subdomain
        if subdomain is not None and scope["type"] in ("http", "websocket"):
            target = subdomain.hosts.of(scope)
            if target is not None:
                await subdomain.serve(scope, receive, send, target)
                return
            if path.startswith("/w/"):
                await subdomain.enter_from_hub(scope, receive, send)
                return
            if path == TICKET_PATH:
                await subdomain.ticket_from_hub(scope, receive, send)
                return
        if path.startswith("/w/") and scope["type"] in ("http", "websocket"):
            await self.relay.handle(scope, receive, send)
            return
        if path.startswith("/ws/workspaces/") and scope["type"] == "websocket":
            await serve_terminal(self.terminal, scope, receive, send)
            return
        await self.app(scope, receive, send)
