"""Entering a workspace's own origin in subdomain mode: one-time tickets and workspace cookies.

The hub's session cookie is host-only on the hub's host, so a workspace host (``<id>.<workspace domain>``)
never sees it. The way in is a ticket, OAuth-style: the workspace host gives the browser a random state
cookie (``new_state``) and sends it to the hub with the state; the hub, where the browser is signed in, makes
a ticket bound to that state (``issue``) and redirects to ``<id>.<domain>/_codehub/enter?ticket=…``; the
workspace host trades ticket and state cookie (``redeem``) for a workspace cookie (``open_cookie``).

- A ticket is 32 random bytes, stored as its sha256 only, bound to one user, one workspace, the token that
  asked for it and the browser's state (sha256), and good for ``TICKET_TTL`` seconds. Redeeming deletes the
  row with one ``DELETE … RETURNING``, so of two concurrent redemptions exactly one gets it (SQLite and
  Postgres alike). The state keeps a ticket in the browser it was made for: a link carrying someone else's
  ticket (a forced entry into their workspace, as them) finds no matching state cookie.
- A workspace cookie is a token of kind ``workspace`` (prefix ``chws_``, sha256 stored) naming its workspace:
  ``AuthService.principal_of`` refuses it, so the API and the terminal never accept it, and
  ``workspace_principal_of`` accepts it on its own workspace's host alone. Revoking the token that entered
  (logging out) revokes it, and so does anything that ends all of a user's tokens.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select

from app.db import SessionMaker
from app.models import ApiToken, User, WorkspaceTicket, utcnow
from app.services.auth.access import WORKSPACE_TOKEN_KIND, WORKSPACE_TOKEN_PREFIX
from app.services.auth.users import hash_token
from app.settings import Settings

TICKET_PREFIX = "chtk_"
STATE_PREFIX = "chst_"
TICKET_TTL = 30.0  # seconds: a redirect's worth, with room for a slow network
STATE_TTL = 300  # seconds the state cookie lives: the hub may first show its starting page


class TicketRefusal(StrEnum):
    """Why a ticket opened nothing (each shown to the browser as a clear page)."""

    UNKNOWN = "unknown"  # never issued, or already used
    EXPIRED = "expired"
    OTHER_WORKSPACE = "other_workspace"
    REVOKED = "revoked"  # the user or the token that asked for it is gone
    OTHER_BROWSER = "other_browser"  # made for another browser's state (or this one has none)


class TicketRefused(Exception):
    """A ticket that cannot be redeemed, and why."""

    def __init__(self, reason: TicketRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Entry:
    """What a redeemed ticket names: the user, the workspace, the token that asked for it and when that token
    ends (None: never)."""

    __slots__ = ("parent_expires_at", "parent_id", "user_id", "workspace_id")

    def __init__(self, user_id: int, workspace_id: str, parent_id: str, parent_expires_at: datetime | None) -> None:
        self.user_id = user_id
        self.workspace_id = workspace_id
        self.parent_id = parent_id
        self.parent_expires_at = parent_expires_at


class WorkspaceEntry:
    """Tickets and workspace cookies, in the hub's database."""

    def __init__(self, sessionmaker: SessionMaker, settings: Settings) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings

    @staticmethod
    def new_state() -> str:
        """A random state for a browser about to enter: its cookie on the workspace host, and the hub binds the
        ticket to it."""
        return STATE_PREFIX + secrets.token_urlsafe(24)

    async def issue(self, user_id: int, workspace_id: str, parent_id: str, state: str) -> str:
        """A new ticket for ``user_id`` into ``workspace_id`` (asked for with token ``parent_id``) for the browser
        holding ``state``; expired tickets are swept on the way. ``TicketRefused`` for a malformed state."""
        if not _valid_state(state):
            raise TicketRefused(TicketRefusal.OTHER_BROWSER)
        raw = TICKET_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        async with self._sessionmaker() as session:
            await session.execute(delete(WorkspaceTicket).where(WorkspaceTicket.expires_at < now))
            session.add(
                WorkspaceTicket(
                    ticket_hash=hash_token(raw),
                    user_id=user_id,
                    workspace_id=workspace_id,
                    parent_id=parent_id,
                    state_hash=hash_token(state),
                    created_at=now,
                    expires_at=now + timedelta(seconds=TICKET_TTL),
                )
            )
            await session.commit()
        return raw

    async def redeem(self, raw: str, workspace_id: str, states: Sequence[str]) -> Entry:
        """Use ticket ``raw`` on ``workspace_id``'s host by the browser holding state cookies ``states`` (one, or
        a few when a sibling host tossed some), once; ``TicketRefused`` says why it opens nothing.

        The row goes whatever the outcome: a ticket shown to the wrong host or browser is spent too."""
        if not raw.startswith(TICKET_PREFIX) or len(raw) > 200:
            raise TicketRefused(TicketRefusal.UNKNOWN)
        async with self._sessionmaker() as session:
            row = (
                await session.execute(
                    delete(WorkspaceTicket)
                    .where(WorkspaceTicket.ticket_hash == hash_token(raw))
                    .returning(
                        WorkspaceTicket.user_id,
                        WorkspaceTicket.workspace_id,
                        WorkspaceTicket.parent_id,
                        WorkspaceTicket.expires_at,
                        WorkspaceTicket.state_hash,
                    )
                )
            ).first()
            await session.commit()
            if row is None:
                raise TicketRefused(TicketRefusal.UNKNOWN)
            user_id, ticket_workspace, parent_id, expires_at, state_hash = row
            if _aware(expires_at) <= utcnow():
                raise TicketRefused(TicketRefusal.EXPIRED)
            if ticket_workspace != workspace_id:
                raise TicketRefused(TicketRefusal.OTHER_WORKSPACE)
            if not any(_valid_state(s) and hmac.compare_digest(hash_token(s), state_hash) for s in states):
                raise TicketRefused(TicketRefusal.OTHER_BROWSER)
            parent = (
                await session.execute(
                    select(ApiToken.id, ApiToken.expires_at)
                    .join(User, User.id == ApiToken.user_id)
                    .where(
                        ApiToken.id == parent_id,
                        ApiToken.user_id == user_id,
                        ApiToken.revoked_at.is_(None),
                        User.disabled.is_(False),
                    )
                )
            ).first()
        parent_expires_at = _aware(parent[1]) if parent is not None and parent[1] is not None else None
        if parent is None or (parent_expires_at is not None and parent_expires_at <= utcnow()):
            raise TicketRefused(TicketRefusal.REVOKED)
        return Entry(user_id, workspace_id, parent_id, parent_expires_at)

    async def open_cookie(self, entry: Entry) -> tuple[str, int]:
        """A new workspace cookie value for the entry's user on its workspace's host, and its lifetime in
        seconds: ``workspace_cookie_ttl``, never beyond the end of the token that entered."""
        raw = WORKSPACE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        expires_at = now + timedelta(seconds=self._settings.workspace_cookie_ttl)
        if entry.parent_expires_at is not None:
            expires_at = min(expires_at, entry.parent_expires_at)
        token = ApiToken(
            user_id=entry.user_id,
            name="workspace",
            kind=WORKSPACE_TOKEN_KIND,
            token_hash=hash_token(raw),
            prefix=raw[: len(WORKSPACE_TOKEN_PREFIX) + 4],
            expires_at=expires_at,
            workspace_id=entry.workspace_id,
            parent_id=entry.parent_id,
        )
        async with self._sessionmaker() as session:
            session.add(token)
            await session.commit()
        return raw, max(1, int((expires_at - now).total_seconds()))


def _valid_state(state: str) -> bool:
    return state.startswith(STATE_PREFIX) and len(state) <= 100


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
