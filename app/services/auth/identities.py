"""Users who sign in through an OpenID provider, and groups.

- A person is found by (issuer, subject) in ``user_identities``, never by e-mail or name: a provider that
  lets people change their e-mail cannot hand one person's hub account to another. A first sign-in creates
  the user (a free username from the provider's hints) with no usable password.
- Groups are rows of ``groups`` (``source`` ``oidc`` or ``local``) with memberships in ``user_groups``. At
  every sign-in the user's ``oidc`` memberships become exactly the provider's groups claim; local groups are
  left alone.
- ``CODEHUB_OIDC_ALLOWED_GROUPS`` gates the sign-in (before anything is written); with
  ``CODEHUB_OIDC_ADMIN_GROUPS`` the role follows the provider at every sign-in (admin when in one of them).
"""

from __future__ import annotations

import contextlib
import re

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker
from app.errors import Forbidden
from app.models import ApiToken, Group, User, UserGroup, UserIdentity, utcnow
from app.services.audit.log import AuditEntry, AuditLog
from app.services.auth.oidc import OidcIdentity
from app.services.auth.users import USERNAME_RE, AuthService
from app.settings import Settings

OIDC_SOURCE = "oidc"
LOCAL_SOURCE = "local"
NO_PASSWORD = "!sso"  # never a valid argon2 hash: password sign-in always fails for these users
_NAME_JUNK_RE = re.compile(r"[^a-z0-9_.-]+")
MAX_NAME_TRIES = 50


def username_candidates(identity: OidcIdentity) -> list[str]:
    """Usernames to try for a new user, best first (each valid for ``USERNAME_RE``)."""
    hints = [identity.preferred_username, identity.email.partition("@")[0], identity.name, "user"]
    for hint in hints:
        base = _NAME_JUNK_RE.sub("-", hint.strip().lower()).strip("-._")[:56]
        if base and USERNAME_RE.fullmatch(base):
            return [base] + [f"{base}-{n}" for n in range(2, MAX_NAME_TRIES)]
    return []


class IdentityService:
    """Sign-ins through the OpenID provider: find or create the user, sync groups and role."""

    def __init__(self, sessionmaker: SessionMaker, settings: Settings, auth: AuthService) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._auth = auth

    def check_allowed(self, identity: OidcIdentity) -> None:
        """403 unless the identity is in one of the allowed groups (when any are configured)."""
        allowed = set(self._settings.oidc_allowed_groups)
        if allowed and not allowed.intersection(identity.groups):
            raise Forbidden(
                "your account at the identity provider is in none of the groups allowed to use this hub",
                code="oidc_group_not_allowed",
            )

    async def sign_in(self, identity: OidcIdentity) -> User:
        """The hub user of ``identity`` (created on first sign-in), its groups and role synced; 403 when the
        identity is not allowed here or the user is disabled."""
        user, _ = await self._sign_in(identity, None)
        return user

    async def sign_in_with_session(
        self, identity: OidcIdentity, audit: AuditLog, entry: AuditEntry
    ) -> tuple[User, ApiToken, str]:
        """``sign_in``, a new hub session and ``entry`` audited (as the user) in ONE transaction; the user, the
        session's row and its raw token (the cookie's value)."""
        user, made = await self._sign_in(identity, (audit, entry))
        assert made is not None
        return user, made[0], made[1]

    async def _sign_in(
        self, identity: OidcIdentity, record: tuple[AuditLog, AuditEntry] | None
    ) -> tuple[User, tuple[ApiToken, str] | None]:
        self.check_allowed(identity)
        made = None
        # an audited sign-in takes the audit chain's lock before its first statement (see AuditLog.appending)
        appending = record[0].appending() if record is not None else contextlib.nullcontext()
        async with appending, self._sessionmaker() as session:
            user = await self._find(session, identity)
            if user is None:
                user = await self._create(session, identity)
            if user.disabled:
                raise Forbidden("this hub account is disabled", code="account_disabled")
            await self._sync_groups(session, user.id, identity.groups)
            role = self._role_for(identity, user.role)
            role_changed, user.role = role != user.role, role
            if record is None:
                await session.commit()
            else:
                made = self._auth.new_session(user.id)
                session.add(made[0])
                audit, entry = record
                entry.actor_id, entry.actor_name = user.id, user.username
                await audit.commit_with(session, entry)
        if role_changed:  # the provider's groups made the user an admin or took it away
            await self._auth.user_changed(user.id)
        return user, made

    def _role_for(self, identity: OidcIdentity, current: str) -> str:
        admin_groups = set(self._settings.oidc_admin_groups)
        if not admin_groups:
            return current
        return "admin" if admin_groups.intersection(identity.groups) else "user"

    @staticmethod
    async def _find(session: AsyncSession, identity: OidcIdentity) -> User | None:
        row = (
            await session.execute(
                select(UserIdentity, User)
                .join(User, User.id == UserIdentity.user_id)
                .where(UserIdentity.issuer == identity.issuer, UserIdentity.subject == identity.subject)
            )
        ).first()
        if row is None:
            return None
        row[0].last_login_at = utcnow()
        return row[1]

    async def _create(self, session: AsyncSession, identity: OidcIdentity) -> User:
        for name in username_candidates(identity):
            if await session.scalar(select(User.id).where(User.username == name)) is not None:
                continue
            try:
                async with session.begin_nested():
                    user = User(username=name, password_hash=NO_PASSWORD, role="user")
                    session.add(user)
                    await session.flush()
                    session.add(
                        UserIdentity(
                            user_id=user.id,
                            issuer=identity.issuer,
                            subject=identity.subject,
                            last_login_at=utcnow(),
                        )
                    )
                    await session.flush()
                return user
            except IntegrityError:  # another sign-in took the name, or this identity, at the same moment
                found = await self._find(session, identity)
                if found is not None:
                    return found
        raise Forbidden("no free username for this account: ask an admin", code="oidc_no_username")

    @staticmethod
    async def _sync_groups(session: AsyncSession, user_id: int, names: tuple[str, ...]) -> None:
        rows = await session.execute(
            select(Group.id, Group.name)
            .join(UserGroup, UserGroup.group_id == Group.id)
            .where(UserGroup.user_id == user_id, Group.source == OIDC_SOURCE)
        )
        current_names = {name: group_id for group_id, name in rows}
        if set(current_names) == set(names):  # the common case: nothing changed since the last sign-in
            return
        current = set(current_names.values())
        wanted = {group.id for group in await ensure_groups(session, names, OIDC_SOURCE)}
        if current - wanted:
            await session.execute(
                delete(UserGroup).where(UserGroup.user_id == user_id, UserGroup.group_id.in_(current - wanted))
            )
        for group_id in wanted - current:
            try:
                async with session.begin_nested():
                    session.add(UserGroup(user_id=user_id, group_id=group_id))
            except IntegrityError:  # a concurrent sign-in of the same user added it first
                pass

    async def groups_of(self, user_id: int) -> list[Group]:
        """The groups a user is in, by source then name."""
        async with self._sessionmaker() as session:
            rows = await session.scalars(
                select(Group)
                .join(UserGroup, UserGroup.group_id == Group.id)
                .where(UserGroup.user_id == user_id)
                .order_by(Group.source, Group.name)
            )
            return list(rows)

    async def has_identity(self, user_id: int) -> bool:
        """True when the user signs in through the OpenID provider."""
        async with self._sessionmaker() as session:
            found = await session.scalar(select(UserIdentity.id).where(UserIdentity.user_id == user_id).limit(1))
        return found is not None


async def ensure_groups(session: AsyncSession, names: tuple[str, ...], source: str) -> list[Group]:
    """The groups of ``source`` named ``names``, created when missing (safe against concurrent creators)."""
    if not names:
        return []
    found = {
        g.name: g for g in await session.scalars(select(Group).where(Group.source == source, Group.name.in_(names)))
    }
    for name in names:
        if name in found:
            continue
        try:
            async with session.begin_nested():
                group = Group(name=name, source=source)
                session.add(group)
                await session.flush()
            found[name] = group
        except IntegrityError:
            existing = await session.scalar(select(Group).where(Group.source == source, Group.name == name))
            if existing is not None:
                found[name] = existing
    return [found[name] for name in names if name in found]
