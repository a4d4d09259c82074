"""Single sign-on edges: the sign-in methods the dashboard offers, the browser's round trip through the OpenID
provider (``/auth/oidc/login`` → provider → ``/auth/oidc/callback``), and logout at the provider.

The protocol lives in ``app.services.auth.oidc`` and the users and groups in ``app.services.auth.identities``;
this module only moves cookies and redirects. A refused sign-in is a small HTML page with the reason and its
status (4xx, or 502/503 when the provider fails), never a 500.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect
from litestar.status_codes import HTTP_200_OK, HTTP_303_SEE_OTHER

from app.context import AppContext
from app.controllers.auth import session_cookie
from app.controllers.dashboard import SECURITY_HEADERS
from app.controllers.deps import error_responses
from app.errors import DomainError, NotFound
from app.services.auth.access import Principal, audit_entry, safe_next
from app.services.auth.oidc_cookie import LOGIN_COOKIE, LOGIN_TTL
from app.services.auth.ratelimit import enforce, login_limit
from app.settings import Settings

log = logging.getLogger(__name__)
CALLBACK_PATH = "/auth/oidc/callback"
LOGIN_COOKIE_PATH = "/auth/oidc"


class OidcProviderOut(msgspec.Struct):
    """The OpenID provider as the dashboard shows it."""

    name: str
    login_url: str


class SignInMethods(msgspec.Struct):
    """How people sign in here: with a password, through the OpenID provider, or both."""

    password: bool
    oidc: OidcProviderOut | None = None


class GroupOut(msgspec.Struct):
    """A group a user is in; ``source`` is ``oidc`` (synced at sign-in) or ``local``."""

    id: int
    name: str
    source: str


class LogoutOut(msgspec.Struct):
    """Where the browser goes after logout: the provider's end-session page, or the hub."""

    redirect: str


def hub_base(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The hub's external origin: ``public_url``, else the one the request was made to."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def login_cookie(settings: Settings, value: str, *, ending: bool = False) -> Cookie:
    """The short-lived cookie carrying a sign-in in progress (signed; only the callback path sees it)."""
    return Cookie(
        key=LOGIN_COOKIE,
        value=value,
        path=LOGIN_COOKIE_PATH,
        max_age=0 if ending else LOGIN_TTL,
        httponly=True,
        samesite="lax",  # the provider brings the browser back with a top-level GET from its own site
        secure=settings.cookie_secure,
    )


def refusal_page(error: DomainError, cookies: list[Cookie]) -> Response[str]:
    """The page a refused sign-in ends on: the reason in words, the code, and the way back."""
    detail, code = html.escape(error.detail), html.escape(error.code)
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Sign-in refused · code-hub</title>'
        '<link rel="stylesheet" href="/static/dashboard.css"></head><body><main class="login">'
        f'<section class="card login-card"><h1>Sign-in refused</h1><p id="refusal">{detail}</p>'
        f'<p class="muted">Reason code: <code id="refusal-code">{code}</code></p>'
        '<p><a href="/">Back to the hub</a></p></section></main></body></html>'
    )
    return Response(
        body,
        status_code=error.status,
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store", **error.headers},
        cookies=cookies,
    )


class SsoController(Controller):
    """Single sign-on through the configured OpenID provider."""

    tags = ["auth"]

    @get("/api/auth/methods", opt={"public": True}, operation_id="signInMethods")
    async def methods(self, ctx: AppContext) -> SignInMethods:
        """The sign-in methods this hub offers (the dashboard shows a button per method)."""
        provider = OidcProviderOut(ctx.oidc.provider_name, "/auth/oidc/login") if ctx.oidc.enabled else None
        return SignInMethods(ctx.settings.password_login, provider)

    @get("/api/auth/groups", operation_id="myGroups", responses=error_responses(401))
    async def my_groups(self, ctx: AppContext, principal: Principal) -> list[GroupOut]:
        """The groups I am in (those from the provider as of my last sign-in)."""
        return [GroupOut(g.id, g.name, g.source) for g in await ctx.identities.groups_of(principal.user_id)]

    @get("/auth/oidc/login", opt={"public": True}, include_in_schema=False)
    async def login(self, request: Request[Any, Any, Any], ctx: AppContext, next: str | None = None) -> Response[Any]:
        """Send the browser to the OpenID provider, holding the sign-in's secrets in a signed cookie."""
        if not ctx.oidc.enabled:
            return refusal_page(NotFound("single sign-on is not configured on this hub", code="oidc_off"), [])
        client = request.client.host if request.client else "-"
        try:  # sign-in starts are bounded per client address like password attempts
            await enforce(ctx.rate_limiter, f"oidc|{client}", login_limit(ctx.settings))
            start = await ctx.oidc.begin(hub_base(request, ctx.settings) + CALLBACK_PATH, safe_next(next))
        except DomainError as exc:
            return refusal_page(exc, [])
        response: Response[Any] = Redirect(start.url, status_code=HTTP_303_SEE_OTHER)
        response.set_cookie(login_cookie(ctx.settings, start.cookie))
        response.headers["Cache-Control"] = "no-store"
        return response

    @get(CALLBACK_PATH, opt={"public": True}, include_in_schema=False)
    async def callback(self, request: Request[Any, Any, Any], ctx: AppContext) -> Response[Any]:
        """Finish the sign-in: verify the provider's answer, find or create the user, start a hub session."""
        ending = login_cookie(ctx.settings, "", ending=True)
        if not ctx.oidc.enabled:
            return refusal_page(NotFound("single sign-on is not configured on this hub", code="oidc_off"), [ending])
        query = {key: value for key, value in request.query_params.items() if isinstance(value, str)}
        try:
            finished = await ctx.oidc.finish(
                hub_base(request, ctx.settings) + CALLBACK_PATH, query, request.cookies.get(LOGIN_COOKIE)
            )
            entry = audit_entry(request.scope, "auth.sso_login")
            _, _, raw = await ctx.identities.sign_in_with_session(finished.identity, ctx.audit, entry)
        except DomainError as exc:
            await ctx.audit.record(
                audit_entry(request.scope, "auth.sso_login", outcome="denied", details={"reason": exc.code})
            )
            return refusal_page(exc, [ending])
        response: Response[Any] = Redirect(safe_next(finished.next), status_code=HTTP_303_SEE_OTHER)
        response.set_cookie(session_cookie(ctx.settings, raw))
        response.set_cookie(ending)
        response.headers["Cache-Control"] = "no-store"
        return response

    @post(
        "/api/auth/oidc/logout",
        status_code=HTTP_200_OK,
        operation_id="ssoLogout",
        responses=error_responses(401),
    )
    async def logout(
        self, request: Request[Any, Any, Any], ctx: AppContext, principal: Principal
    ) -> Response[LogoutOut]:
        """End the hub session and say where the browser goes next: the provider's end-session page (RP-initiated
        logout) for a user who signs in there, else the hub."""
        if principal.token_kind == "session":
            await ctx.auth.revoke_token(principal.user_id, principal.token_id)
        await ctx.audit.record(audit_entry(request.scope, "auth.logout", principal))
        redirect = "/"
        if ctx.oidc.enabled and await ctx.identities.has_identity(principal.user_id):
            base = hub_base(request, ctx.settings)
            redirect = await ctx.oidc.logout_url(base + "/") or "/"
        ending = session_cookie(ctx.settings, "", ending=True)
        return Response(LogoutOut(redirect), cookies=[ending])
