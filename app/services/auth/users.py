"""Users, passwords and opaque API tokens (only their sha256 is stored)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.db import SessionMaker
from app.errors import Conflict, NotFound, Unauthorized, Unprocessable
from app.models import ApiToken, User, utcnow
from app.services.auth.access import (
    TOKEN_PREFIX,
    WORKSPACE_TOKEN_KIND,
    WORKSPACE_TOKEN_PREFIX,
    Principal,
    Revocation,
    TokenCache,
)
from app.services.auth.revocations import RedisRevocations
from app.settings import Settings

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
ROLES = ("admin", "user")
_hasher = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """An Argon2 hash (the hasher's parameters) that unknown usernames are checked against, so a refusal takes
    as long whether or not the user exists. Made on first use, not at import: it costs 0.3-0.7 s of CPU that
    commands which never check a password (``migrate``, ``create-user``) need not pay; ``compose`` makes it
    at startup so that no login pays it."""
    return _hasher.hash("codehub-dummy-password")


def hash_token(raw: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(raw.encode()).hexdigest()


def normalize_username(username: str) -> str:
    """Lower-case and validate a username (1-64 of a-z 0-9 _ . -, starting with a letter or digit)."""
    name = username.strip().lower()
    if not USERNAME_RE.fullmatch(name):
        raise Unprocessable("username must be 1-64 characters of a-z, 0-9, '_', '.', '-'", code="bad_username")
    return name


def check_password_strength(password: str) -> None:
    """Refuse passwords that are too short or too long."""
    if not 8 <= len(password) <= 1024:
        raise Unprocessable("password must be 8 to 1024 characters", code="bad_password")


class AuthService:
    """User and token operations. Verified tokens are cached in-process (``tokens``) for ``token_cache_ttl``
    seconds; revocations drop them at once here and, through ``revocations``, in the other hub processes."""

    def __init__(
        self, sessionmaker: SessionMaker, settings: Settings, revocations: RedisRevocations | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._revocations = revocations
        self.tokens = TokenCache(settings.token_cache_ttl)

    async def create_user(self, username: str, password: str, role: str = "user") -> User:
        """Create a user; 409 when the name is taken."""
        name = normalize_username(username)
        check_password_strength(password)
        if role not in ROLES:
            raise Unprocessable(f"role must be one of {', '.join(ROLES)}", code="bad_role")
        password_hash = await anyio.to_thread.run_sync(_hasher.hash, password)
        async with self._sessionmaker() as session:
            user = User(username=name, password_hash=password_hash, role=role)
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"user {name!r} already exists", code="user_exists") from None
        return user

    async def count_users(self) -> int:
        """How many users exist."""
        async with self._sessionmaker() as session:
            return int(await session.scalar(select(func.count(User.id))) or 0)

    async def get_user(self, user_id: int) -> User:
        """A user by id, or 404."""
        async with self._sessionmaker() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    async def get_user_by_name(self, username: str) -> User:
        """A user by name, or 404."""
        async with self._sessionmaker() as session:
            user = await session.scalar(select(User).where(User.username == username.strip().lower()))
        if user is None:
            raise NotFound(f"no user named {username!r}")
        return user

    async def list_users(self, *, limit: int, offset: int) -> list[User]:
        """Users ordered by id."""
        async with self._sessionmaker() as session:
            rows = await session.scalars(select(User).order_by(User.id).limit(limit).offset(offset))
            return list(rows)

    async def update_user(
        self,
        user_id: int,
        *,
        role: str | None = None,
        disabled: bool | None = None,
        password: str | None = None,
        actor_id: int | None = None,
        keep_an_admin: bool = True,
    ) -> User:
        """Change role, disabled flag or password; cached tokens of the user are dropped.

        409 when ``actor_id`` (the admin asking) would disable or demote themselves, or (``keep_an_admin``)
        when the change would leave no enabled admin: nobody could manage the hub any more. The identity
        provider's group sync passes ``keep_an_admin=False``: there the provider decides, and the CLI still
        makes a break-glass admin.
        """
        if role is not None and role not in ROLES:
            raise Unprocessable(f"role must be one of {', '.join(ROLES)}", code="bad_role")
        if password is not None:
            check_password_strength(password)
            password_hash = await anyio.to_thread.run_sync(_hasher.hash, password)
        async with self._sessionmaker() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound("no such user")
            loses_admin = user.is_admin and not user.disabled and (disabled is True or role not in (None, "admin"))
            if loses_admin and actor_id == user_id:
                raise Conflict("you cannot disable or demote yourself: ask another admin", code="self_demotion")
            if loses_admin and keep_an_admin:
                admins = await session.scalar(
                    select(func.count(User.id)).where(User.role == "admin", User.disabled.is_(False))
                )
                if (admins or 0) <= 1:
                    raise Conflict(
                        f"{user.username} is the last enabled admin: make another user admin first",
                        code="last_admin",
                    )
            if role is not None:
                user.role = role
            if disabled is not None:
                user.disabled = disabled
            if password is not None:
                user.password_hash = password_hash
            await session.commit()
        await self._revoked(Revocation(user_id=user_id))
        return user

    async def authenticate_password(self, username: str, password: str) -> User:
        """The user whose name and password match; one uniform 401 otherwise (no hint which part failed)."""
        try:
            name = normalize_username(username)
        except Unprocessable:
            name = ""
        async with self._sessionmaker() as session:
            user = await session.scalar(select(User).where(User.username == name)) if name else None
        stored = user.password_hash if user is not None else await anyio.to_thread.run_sync(dummy_hash)
        try:
            ok: bool = await anyio.to_thread.run_sync(_hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None or user.disabled:
            raise Unauthorized("invalid username or password", code="invalid_credentials")
        return user

    @staticmethod
    def new_token(
        user_id: int, *, name: str = "", kind: str = "api", expires_at: datetime | None = None
    ) -> tuple[ApiToken, str]:
        """A token row, not yet stored, and the raw token (shown once, never stored)."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = ApiToken(
            user_id=user_id,
            name=name,
            kind=kind,
            token_hash=hash_token(raw),
            prefix=raw[: len(TOKEN_PREFIX) + 4],
            expires_at=expires_at,
        )
        return token, raw

    async def issue_token(
        self, user_id: int, *, name: str = "", kind: str = "api", expires_at: datetime | None = None
    ) -> tuple[ApiToken, str]:
        """Create a token; returns the row and the raw token, which is shown once and never stored."""
        return await self._store(self.new_token(user_id, name=name, kind=kind, expires_at=expires_at))

    async def _store(self, made: tuple[ApiToken, str]) -> tuple[ApiToken, str]:
        async with self._sessionmaker() as session:
            session.add(made[0])
            await session.commit()
        return made

    def new_session(self, user_id: int) -> tuple[ApiToken, str]:
        """A login session token (the cookie's value) expiring after ``session_ttl``, not yet stored."""
        expires = utcnow() + timedelta(seconds=self._settings.session_ttl)
        return self.new_token(user_id, name="session", kind="session", expires_at=expires)

    async def issue_session(self, user_id: int) -> tuple[ApiToken, str]:
        """A login session token (the cookie's value) that expires after ``session_ttl``."""
        return await self._store(self.new_session(user_id))

    async def list_tokens(self, user_id: int) -> list[ApiToken]:
        """A user's live API tokens (not revoked, not sessions), newest first."""
        async with self._sessionmaker() as session:
            rows = await session.scalars(
                select(ApiToken)
                .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None), ApiToken.kind == "api")
                .order_by(ApiToken.created_at.desc())
            )
            return list(rows)

    async def revoke_token(self, user_id: int, token_id: str) -> ApiToken:
        """Revoke one of the user's tokens (404 for a foreign or unknown id), and the workspace cookies it
        opened."""
        async with self._sessionmaker() as session:
            token = await session.get(ApiToken, token_id)
            if token is None or token.user_id != user_id or token.revoked_at is not None:
                raise NotFound("no such token")
            token.revoked_at = utcnow()
            children = await session.execute(
                update(ApiToken)
                .where(ApiToken.parent_id == token_id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=token.revoked_at)
            )
            await session.commit()
        await self._revoked(Revocation(token_id=token_id))
        if children.rowcount:  # type: ignore[attr-defined]
            await self._revoked(Revocation(user_id=user_id))
        return token

    async def user_changed(self, user_id: int) -> None:
        """The user's role or state changed elsewhere: drop its cached tokens here and in every hub process."""
        await self._revoked(Revocation(user_id=user_id))

    async def _revoked(self, revocation: Revocation) -> None:
        self.tokens.apply(revocation)
        if self._revocations is not None:
            await self._revocations.announce(revocation)

    async def resolve(self, raw: str) -> Principal:
        """The principal a raw token proves; 401 when unknown, expired, revoked or its user disabled."""
        principal = await self.principal_of(raw)
        if principal is None:
            raise Unauthorized("invalid or expired token", code="invalid_token")
        return principal

    def cached(self, raw: str) -> Principal | None:
        """The principal a raw token proves if the cache holds it, else None (no database lookup)."""
        if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
            return None
        return _hub_only(self.tokens.peek(hash_token(raw)))

    async def principal_of(self, raw: str) -> Principal | None:
        """The principal a raw token proves, or None (cached, see ``app.services.auth.access.TokenCache``).
        A workspace cookie proves no one here: it is good on its workspace's host alone."""
        if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
            return None
        return _hub_only(await self.tokens.get(hash_token(raw), self._lookup))

    def cached_workspace(self, raw: str, workspace_id: str) -> Principal | None:
        """Who workspace cookie ``raw`` proves on ``workspace_id``'s host, from the cache alone."""
        if not raw.startswith(WORKSPACE_TOKEN_PREFIX) or len(raw) > 200:
            return None
        return _for_workspace(self.tokens.peek(hash_token(raw)), workspace_id)

    async def workspace_principal_of(self, raw: str, workspace_id: str) -> Principal | None:
        """Who workspace cookie ``raw`` proves on ``workspace_id``'s host, or None (any other token, or a
        workspace cookie of another workspace, proves no one there)."""
        if not raw.startswith(WORKSPACE_TOKEN_PREFIX) or len(raw) > 200:
            return None
        return _for_workspace(await self.tokens.get(hash_token(raw), self._lookup), workspace_id)

    async def _lookup(self, digest: str) -> Principal | None:
        async with self._sessionmaker() as session:
            row = (
                await session.execute(
                    select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == digest)
                )
            ).first()
            if row is None or not hmac.compare_digest(row[0].token_hash, digest):
                return None
            token, user = row
            current = utcnow()
            if token.revoked_at is not None or user.disabled or (token.expires_at and token.expires_at <= current):
                return None
            if token.last_used_at is None or (current - token.last_used_at).total_seconds() > 60:
                await session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=current))
                await session.commit()
        return Principal(user.id, user.username, user.role, token.id, token.kind, token.workspace_id)


def _hub_only(principal: Principal | None) -> Principal | None:
    return principal if principal is not None and principal.workspace_id is None else None


def _for_workspace(principal: Principal | None, workspace_id: str) -> Principal | None:
    if principal is None or principal.token_kind != WORKSPACE_TOKEN_KIND or principal.workspace_id != workspace_id:
        return None
    return principal
