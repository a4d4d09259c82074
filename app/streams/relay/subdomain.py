"""Subdomain mode: every workspace on an origin of its own (``CODEHUB_WORKSPACE_DOMAIN``).

The entry, OAuth-style (``app.services.auth.workspace_entry`` holds tickets and cookies):

1. hub ``/w/<label>/…`` (``<label>`` is ``<id>`` or ``<port>--<id>``): access checked with the hub's
   credentials (the IDE: owner, or an admin, audited as impersonation; a port: owner only), the starting page
   while the workspace is not running, then a redirect to the workspace host's ``/_codehub/start``;
2. workspace host ``/_codehub/start`` (or any page load there without a workspace cookie): a random state in a
   host-only cookie, and a redirect to the hub's ``/_codehub/ticket?label=&state=&next=``;
3. hub ``/_codehub/ticket``: access checked again, a one-time ticket bound to that state, a redirect to
   ``/_codehub/enter?ticket=…`` on the workspace host;
4. workspace host ``/_codehub/enter``: ticket and state cookie traded for a host-only workspace cookie, and a
   redirect to ``next`` (a path on that host).

The state keeps a ticket in the browser that asked for it, so a link carrying someone else's ticket enters
no one. Every other request on a workspace host is authenticated by the workspace cookie alone (no hub token
is accepted there), checked against the workspace on every request, held to the origin rule of the host
itself for unsafe requests and upgrades, and relayed: the IDE host to the IDE, a port host through
code-server's ``/proxy/<port>/`` (the IDE's secret authenticates it, so a port needs neither a published port
nor the container's address, and works wherever the IDE does). The hub's API is not served on the IDE host
(421); names under the domain that name no workspace get 404; WebSockets to the hub's ``/w/…`` are refused.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from app.errors import send_error
from app.services.auth.access import (
    WORKSPACE_COOKIE,
    WORKSPACE_STATE_COOKIE,
    Credentials,
    IdeAccess,
    Level,
    Principal,
    header,
    ide_access,
    identify,
    safe_next,
)
from app.services.auth.workspace_entry import STATE_TTL, TicketRefusal, TicketRefused, WorkspaceEntry
from app.streams.relay import pages
from app.streams.relay.access import Route
from app.streams.relay.hosts import HostTarget, WorkspaceHosts, parse_label
from app.streams.relay.sessions import REVOKED_CODE, REVOKED_REASON
from app.streams.relay.splice import SPLICE
from app.streams.relay.ws import deny

ENTER_PATH = "/_codehub/enter"
START_PATH = "/_codehub/start"
TICKET_PATH = "/_codehub/ticket"  # on the hub's host
_WS_COOKIE = WORKSPACE_COOKIE.encode()
_STATE_COOKIE = WORKSPACE_STATE_COOKIE.encode()
_NO_REFERRER = (b"referrer-policy", b"no-referrer")
_REFUSALS = {
    TicketRefusal.UNKNOWN: "This entry link was already used or never existed. Links into a workspace work once.",
    TicketRefusal.EXPIRED: "This entry link expired. Links into a workspace are good for a few seconds.",
    TicketRefusal.OTHER_WORKSPACE: "This entry link belongs to another workspace.",
    TicketRefusal.REVOKED: "The sign-in that made this entry link has ended.",
    TicketRefusal.OTHER_BROWSER: "This entry link was made for another browser (or this one did not ask for it).",
}


def cookie_values(headers: list[tuple[bytes, bytes]], cookie: bytes) -> list[str]:
    """Every value of cookie ``cookie`` the request carries (a sibling host may have set one for the whole
    domain, so all are tried, at most four)."""
    found: list[str] = []
    for name, value in headers:
        if name == b"cookie" and cookie in value:
            for part in value.split(b";"):
                key, _, raw = part.strip().partition(b"=")
                if key == cookie and len(found) < 4:
                    found.append(raw.strip(b'"').decode("latin-1"))
    return found


def same_host_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    """True unless the browser says the request comes from another origin than the host it is sent to: sibling
    workspace hosts are the same site, so SameSite alone does not keep their requests out."""
    origin = header(headers, b"origin")
    if origin is not None:
        host = header(headers, b"host") or b""
        return origin.partition(b"://")[2].lower() == host.lower()
    site = header(headers, b"sec-fetch-site")
    return site is None or site in (b"same-origin", b"none")


class SubdomainFront:
    """The subdomain-mode doors of one relay: entry on the hub's host, workspace hosts."""

    def __init__(self, relay: Any, hosts: WorkspaceHosts) -> None:
        self.relay = relay
        self.hosts = hosts
        self.settings = relay.settings
        self.auth = relay.deps.auth
        self.entry = WorkspaceEntry(relay.deps.sessionmaker, relay.settings)
        secure = "; Secure" if self.settings.cookie_secure else ""
        self.cookie_attributes = "; Path=/; HttpOnly; SameSite=Lax" + secure

    # -- the hub's host ------------------------------------------------------------------------------------

    async def enter_from_hub(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``/w/<label>/…`` on the hub's host: access checked (and the starting page shown while the workspace
        is not running), then off to the workspace's own origin, which starts the entry."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        slash = raw_path.find(b"/", 3)
        target = parse_label((raw_path[3:] if slash < 0 else raw_path[3:slash]).decode("latin-1"))
        query = scope.get("query_string", b"")
        rest = (raw_path[slash:] if slash >= 0 else b"/") + (b"?" + query if query else b"")
        principal = await self._hub_principal(scope, send, target, raw_path.decode("latin-1"))
        if principal is None:
            return
        route = await self._running_route(scope, send, principal, target)
        if route is not None:
            location = f"{self.hosts.origin(target.label)}{START_PATH}?{urlencode({'next': rest.decode('latin-1')})}"
            await pages.redirect(send, location.encode("latin-1"))

    async def ticket_from_hub(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``/_codehub/ticket?label=&state=&next=`` on the hub's host: a ticket for the browser holding that
        state on the workspace host, and a redirect there."""
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        target = parse_label(params.get("label", ""))
        nxt = safe_next(params.get("next"))
        principal = await self._hub_principal(scope, send, target, f"/w/{target.label}{nxt}")
        if principal is None:
            return
        route = await self._running_route(scope, send, principal, target)
        if route is None:
            return
        try:
            ticket = await self.entry.issue(principal.user_id, route.id, principal.token_id, params.get("state", ""))
        except TicketRefused as exc:
            await _entry_refused(send, _REFUSALS[exc.reason], self.hosts.hub_origin)
            return
        location = f"{self.hosts.origin(target.label)}{ENTER_PATH}?{urlencode({'ticket': ticket, 'next': nxt})}"
        await pages.redirect(send, location.encode("latin-1"), extra=[_NO_REFERRER])

    async def _hub_principal(self, scope: dict[str, Any], send: Any, target: HostTarget, back: str) -> Principal | None:
        """Who opens a workspace from the hub (GET with the hub's credentials), or None once refused."""
        if scope["type"] == "websocket":
            await deny(scope, send, 404, "workspaces are served on their own origin")
            return None
        if not target.known:
            await pages.not_found(send)
            return None
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, {"error": "method_not_allowed", "detail": "open the workspace with GET"})
            return None
        principal = await identify(Credentials.of(scope), self.auth)
        if principal is None:
            await pages.sign_in(send, back)
        return principal

    async def _running_route(
        self, scope: dict[str, Any], send: Any, principal: Principal, target: HostTarget
    ) -> Route | None:
        """The workspace's route when ``principal`` may open it and it runs; else the refusal or starting page
        was sent and None."""
        route = await self.relay.routes.get(target.workspace_id)
        if not await self._may_open(scope, send, principal, route, target, False):
            return None
        if route.endpoint is None:
            route = await self.relay.routes.load(target.workspace_id)
            if route.endpoint is None:
                await self.relay.not_running(scope, send, route, principal)
                return None
        return route  # type: ignore[no-any-return]

    # -- workspace hosts -----------------------------------------------------------------------------------

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any, target: HostTarget) -> None:
        """One request or WebSocket on a host under the workspace domain."""
        is_ws = scope["type"] == "websocket"
        if not target.known:
            await (deny(scope, send, 404, "no such host") if is_ws else _no_such_host(send))
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if raw_path.startswith(b"/_codehub/"):
            if raw_path == ENTER_PATH.encode() and not is_ws and scope["method"] == "GET":
                await self._enter(scope, send, target)
            elif raw_path == START_PATH.encode() and not is_ws and scope["method"] == "GET":
                params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
                await self._start_entry(send, target, safe_next(params.get("next")))
            else:
                await (deny(scope, send, 404, "not found") if is_ws else pages.not_found(send))
            return
        if not target.port and raw_path.startswith(b"/api/") and not is_ws:
            await send_error(
                send, 421, {"error": "misdirected", "detail": "the hub's API is not served on workspace hosts"}
            )
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        principal = await self._principal(headers, target.workspace_id)
        if principal is None:
            await self._not_signed_in(scope, send, target, raw_path, is_ws)
            return
        route = await self.relay.routes.get(target.workspace_id)
        if not await self._may_open(scope, send, principal, route, target, is_ws):
            return
        if (is_ws or scope["method"] not in ("GET", "HEAD", "OPTIONS")) and not same_host_origin(headers):
            detail = "this request must come from the workspace's own origin"
            if is_ws:
                self.relay.stats.of(route.id).failed_upgrades += 1
                await deny(scope, send, 403, f"cross_origin: {detail}")
            else:
                await send_error(send, 403, {"error": "cross_origin", "detail": detail})
            return
        rest = raw_path if not target.port else b"/proxy/%d" % target.port + raw_path
        creds = Credentials(())
        if route.endpoint is None:
            route = await self.relay.routes.load(target.workspace_id)
        if route.endpoint is None:
            if is_ws:
                self.relay.stats.of(route.id).failed_upgrades += 1
                await deny(scope, send, 503, f"the workspace is {route.state}")
            elif _navigation(scope):
                await pages.redirect(send, self._hub_entry(target, raw_path, scope))
            else:
                await pages.not_running(send, route.state)
            return
        if is_ws and route.owner_id != principal.user_id and not principal.is_admin:
            await self._shared_websocket(scope, receive, send, route, rest, headers, principal)
        elif is_ws:
            await self.relay.relay_websocket(scope, receive, send, route, rest, headers, creds, b"")
        else:
            await self.relay.relay_http(scope, receive, send, route, rest, headers, creds, b"")

    async def _shared_websocket(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        route: Route,
        rest: bytes,
        headers: list[tuple[bytes, bytes]],
        principal: Principal,
    ) -> None:
        """A grantee's IDE WebSocket: relayed frame by frame (never spliced, so the hub can end it), and closed
        with 1008 when the grant goes away."""
        extensions = {key: value for key, value in (scope.get("extensions") or {}).items() if key != SPLICE}
        scope = {**scope, "extensions": extensions}
        with self.relay.sessions.hold(route.id, route.owner_id, principal, Level.USE) as held:
            await self.relay.relay_websocket(scope, receive, send, route, rest, headers, Credentials(()), b"")
        if held.revoked:
            try:
                await send({"type": "websocket.close", "code": REVOKED_CODE, "reason": REVOKED_REASON})
            except Exception:  # the browser went away meanwhile
                return

    async def _principal(self, headers: list[tuple[bytes, bytes]], workspace_id: str) -> Principal | None:
        for raw in cookie_values(headers, _WS_COOKIE):
            principal = self.auth.cached_workspace(raw, workspace_id)
            if principal is None:
                principal = await self.auth.workspace_principal_of(raw, workspace_id)
            if principal is not None:
                return principal  # type: ignore[no-any-return]
        return None

    async def _may_open(
        self, scope: dict[str, Any], send: Any, principal: Principal, route: Route, target: HostTarget, is_ws: bool
    ) -> bool:
        """The IDE: the owner, or an admin (audited: on its own origin the workspace cannot act as the admin on
        the hub). A port: the owner only. A grantee with ``use``: the IDE (its own origin keeps the owner's code
        away from the grantee's hub session). Everyone else: the workspace does not exist."""
        granted = None
        if not target.port and route.owner_id is not None and route.owner_id != principal.user_id:
            grants = self.relay.deps.workspaces.grants
            known, granted = grants.cached_level(route.id, principal.user_id)
            if not known:
                granted = await grants.level_of(route.id, principal.user_id)
        access = ide_access(principal, route.owner_id, admin_path_access=not target.port, granted=granted)
        if access in (IdeAccess.OWNER, IdeAccess.SHARED):
            return True
        if access == IdeAccess.IMPERSONATE:
            await self.relay.note_impersonation(scope, principal, route)
            return True
        await (deny(scope, send, 404, "no such workspace") if is_ws else pages.not_found(send))
        return False

    async def _start_entry(self, send: Any, target: HostTarget, nxt: str) -> None:
        """Give the browser a state cookie and send it to the hub for a ticket bound to that state."""
        state = self.entry.new_state()
        cookie = f"{WORKSPACE_STATE_COOKIE}={state}{self.cookie_attributes}; Max-Age={STATE_TTL}"
        params = urlencode({"label": target.label, "state": state, "next": nxt})
        location = f"{self.hosts.hub_origin}{TICKET_PATH}?{params}".encode("latin-1")
        await pages.redirect(send, location, extra=[(b"set-cookie", cookie.encode("latin-1")), _NO_REFERRER])

    async def _enter(self, scope: dict[str, Any], send: Any, target: HostTarget) -> None:
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        states = cookie_values(scope["headers"], _STATE_COOKIE)
        try:
            entry = await self.entry.redeem(params.get("ticket", ""), target.workspace_id, states)
        except TicketRefused as exc:
            await _entry_refused(send, _REFUSALS[exc.reason], self.hosts.hub_origin)
            return
        raw, max_age = await self.entry.open_cookie(entry)
        cookie = f"{WORKSPACE_COOKIE}={raw}{self.cookie_attributes}; Max-Age={max_age}".encode("latin-1")
        spent = f"{WORKSPACE_STATE_COOKIE}={self.cookie_attributes}; Max-Age=0".encode("latin-1")
        location = safe_next(params.get("next")).encode("latin-1")
        await pages.redirect(send, location, extra=[(b"set-cookie", cookie), (b"set-cookie", spent), _NO_REFERRER])

    async def _not_signed_in(
        self, scope: dict[str, Any], send: Any, target: HostTarget, raw_path: bytes, is_ws: bool
    ) -> None:
        """No valid workspace cookie: a page load goes through the hub's entry again, anything else gets 401."""
        if is_ws:
            await deny(scope, send, 401, "enter the workspace through the hub first")
        elif _navigation(scope):
            query = scope.get("query_string", b"")
            await self._start_entry(
                send, target, safe_next((raw_path + (b"?" + query if query else b"")).decode("latin-1"))
            )
        else:
            await send_error(send, 401, {"error": "unauthenticated", "detail": "enter the workspace through the hub"})

    def _hub_entry(self, target: HostTarget, raw_path: bytes, scope: dict[str, Any]) -> bytes:
        query = scope.get("query_string", b"")
        path = quote(raw_path.decode("latin-1"), safe="/%:@!$&'()*+,;=-._~")
        suffix = "?" + query.decode("latin-1") if query else ""
        return f"{self.hosts.hub_origin}/w/{target.label}{path}{suffix}".encode("latin-1")


def _navigation(scope: dict[str, Any]) -> bool:
    headers = scope["headers"]
    accept = header(headers, b"accept") or b""
    return scope["method"] == "GET" and (header(headers, b"sec-fetch-mode") == b"navigate" or b"text/html" in accept)


async def _no_such_host(send: Any) -> None:
    await send_error(send, 404, {"error": "no_such_host", "detail": "this name serves no workspace"})


async def _entry_refused(send: Any, reason: str, hub: str) -> None:
    await pages.send_page(
        send,
        403,
        "Entry refused",
        f"<h1>This link does not open the workspace</h1><p>{html.escape(reason)}</p>"
        f'<p>Open the workspace again from the <a href="{html.escape(hub)}/">dashboard</a>.</p>',
        extra=[(b"referrer-policy", b"no-referrer")],
    )
