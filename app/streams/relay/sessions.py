"""Open connections of people to workspaces (terminals, IDE WebSockets), so that losing access closes them.

Each connection runs inside ``Sessions.hold``: a cancel scope registered under its workspace with the
principal and the level it needs. When a workspace's access changes (``workspace.access_changed``, seen by
every hub process through the event hub), ``recheck`` asks the access rule again for every connection of
someone who is neither the owner nor an admin, and cancels those that lost it. The same registry answers
who is connected to a workspace right now (``present``) for this process; ``app.streams.relay.presence``
shares that with the other hub processes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio

from app.services.auth.access import Level, Principal

REVOKED_CODE = 1008  # policy violation: the close code a connection gets when its access is gone
REVOKED_REASON = "access revoked"


@dataclass(eq=False, slots=True)
class Session:
    """One open connection: who, to which workspace, needing what; ``revoked`` once closed for lost access."""

    workspace_id: str
    owner_id: int | None
    principal: Principal
    need: Level
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    revoked: bool = False

    @property
    def id(self) -> str:
        """The workspace's id (what the access rule reads, with ``owner_id``)."""
        return self.workspace_id


def _nothing() -> None:
    return None


class Sessions:
    """The open connections of this hub process, by workspace."""

    def __init__(self) -> None:
        self._open: dict[str, set[Session]] = {}
        self.on_change: Callable[[], None] = _nothing

    @contextmanager
    def hold(self, workspace_id: str, owner_id: int | None, principal: Principal, need: Level) -> Iterator[Session]:
        """Run the body as an open connection; it is cancelled (and ``revoked`` set) when access is lost."""
        session = Session(workspace_id, owner_id, principal, need)
        self._open.setdefault(workspace_id, set()).add(session)
        self.on_change()
        try:
            with session.scope:
                yield session
        finally:
            held = self._open.get(workspace_id)
            if held is not None:
                held.discard(session)
                if not held:
                    del self._open[workspace_id]
            self.on_change()

    def present(self, workspace_id: str) -> dict[tuple[int, str], int]:
        """Open connections to the workspace by (user id, username)."""
        counts: dict[tuple[int, str], int] = {}
        for session in self._open.get(workspace_id, ()):
            key = (session.principal.user_id, session.principal.username)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def workspaces(self) -> list[str]:
        """The workspaces someone is connected to through this process."""
        return list(self._open)

    async def recheck(self, workspace_id: str, level_of: Callable[[Session], Awaitable[Level | None]]) -> int:
        """Close the workspace's connections whose principal no longer has the level they need; how many."""
        closed = 0
        for session in list(self._open.get(workspace_id, ())):
            if session.principal.is_admin or session.principal.user_id == session.owner_id:
                continue
            level = await level_of(session)
            if level is None or level < session.need:
                session.revoked = True
                session.scope.cancel()
                closed += 1
        return closed
