"""``/api/auth``: login/logout with a session cookie, who am I, and personal API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import Cookie
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.context import AppContext
from app.controllers.deps import error_responses
from app.errors import Forbidden, Unauthorized
from app.models import utcnow
from app.schemas import LoginRequest, LoginResponse, TokenCreate, TokenOut, UserOut
from app.services.auth.access import (
    Principal,
    audit_entry,
    cross_origin_error,
    from_own_origin,
    safe_next,
    session_cookie_attributes,
)
from app.services.auth.ratelimit import enforce, login_limit
from app.settings import Settings


def session_cookie(settings: Settings, raw: str, *, ending: bool = False) -> Cookie:
    """The session cookie (``app.services.auth.access`` owns its attributes) as Litestar sets it."""
    spec = session_cookie_attributes(settings, ending=ending)
    return Cookie(
        key=spec.name,
        value=raw,
        path=spec.path,
        max_age=spec.max_age,
        httponly=spec.http_only,
        samesite=spec.same_site,
        secure=spec.secure,
    )


class AuthController(Controller):
    """Authentication for people (cookie) and programs (bearer tokens)."""

    path = "/api/auth"
    tags = ["auth"]

    @post(
        "/login",
        opt={"public": True},
        status_code=HTTP_200_OK,
        operation_id="login",
        responses=error_responses(400, 401, 403, 429),
    )
    async def login(
        self, request: Request[Any, Any, Any], data: LoginRequest, ctx: AppContext
    ) -> Response[LoginResponse]:
        """Exchange username and password for a session token, also set as the HttpOnly cookie, and say where
        the browser goes next. Only the hub's own pages may sign a browser in (no forced login from elsewhere)."""
        if not from_own_origin(request.scope["headers"], ctx.settings):
            raise cross_origin_error()
        if not ctx.settings.password_login:
            raise Forbidden("password sign-in is turned off on this hub: use single sign-on", code="password_login_off")
        client = request.client.host if request.client else "-"
        await enforce(ctx.rate_limiter, f"{data.username.strip().lower()[:64]}|{client}", login_limit(ctx.settings))
        try:
            user = await ctx.auth.authenticate_password(data.username, data.password)
        except Unauthorized:
            denied = audit_entry(request.scope, "auth.login", outcome="denied", target=data.username[:64])
            await ctx.audit.record(denied)
            raise
        token, raw = await ctx.auth.issue_session(user.id)
        principal = Principal(user.id, user.username, user.role, token.id, token.kind)
        await ctx.audit.record(audit_entry(request.scope, "auth.login", principal))
        cookie = session_cookie(ctx.settings, raw)
        body = LoginResponse(raw, UserOut.of(user), token.expires_at, safe_next(data.next))
        return Response(body, cookies=[cookie])

    @post("/logout", status_code=HTTP_204_NO_CONTENT, operation_id="logout", responses=error_responses(401))
    async def logout(self, request: Request[Any, Any, Any], ctx: AppContext, principal: Principal) -> Response[None]:
        """End the current session (revoke the session token) and clear the cookie."""
        if principal.token_kind == "session":
            await ctx.auth.revoke_token(principal.user_id, principal.token_id)
        await ctx.audit.record(audit_entry(request.scope, "auth.logout", principal))
        ending = session_cookie(ctx.settings, "", ending=True)
        return Response(None, status_code=HTTP_204_NO_CONTENT, cookies=[ending])

    @get("/me", operation_id="me", responses=error_responses(401))
    async def me(self, ctx: AppContext, principal: Principal) -> UserOut:
        """The authenticated user."""
        return UserOut.of(await ctx.auth.get_user(principal.user_id))

    @get("/tokens", operation_id="listTokens", responses=error_responses(401))
    async def list_tokens(self, ctx: AppContext, principal: Principal) -> list[TokenOut]:
        """My API tokens (metadata only)."""
        return [TokenOut.of(t) for t in await ctx.auth.list_tokens(principal.user_id)]

    @post(
        "/tokens",
        status_code=HTTP_201_CREATED,
        operation_id="createToken",
        responses=error_responses(400, 401),
    )
    async def create_token(
        self, request: Request[Any, Any, Any], data: TokenCreate, ctx: AppContext, principal: Principal
    ) -> TokenOut:
        """Create an API token; the raw value is in this response only."""
        expires = utcnow() + timedelta(days=data.expires_in_days) if data.expires_in_days else None
        token, raw = await ctx.auth.issue_token(principal.user_id, name=data.name, expires_at=expires)
        await ctx.audit.record(audit_entry(request.scope, "token.create", principal, target=token.id))
        return TokenOut.of(token, raw)

    @delete(
        "/tokens/{token_id:str}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="revokeToken",
        responses=error_responses(401, 404),
    )
    async def revoke_token(
        self, request: Request[Any, Any, Any], token_id: str, ctx: AppContext, principal: Principal
    ) -> None:
        """Revoke one of my tokens."""
        await ctx.auth.revoke_token(principal.user_id, token_id)
        await ctx.audit.record(audit_entry(request.scope, "token.revoke", principal, target=token_id))
