"""Open connections of people to workspaces (terminals, IDE WebSockets), so that losing access closes them.

Each connection runs inside ``Sessions.hold``: a cancel scope registered under its workspace with the
principal and the level it needs. When a workspace's access changes (``workspace.access_changed``, seen by
every hub process through the event hub), ``recheck`` asks the access rule again for every connection of
someone who is neither the owner nor an admin, and cancels those that lost it. SSE streams of grantees are
registered with ``Sessions.watch`` and ended their own way (a final ``stream.reset``). The same registry
answers who is connected to a workspace right now (``present``, watched streams left out) for this process;
``app.streams.relay.presence`` shares that with the other hub processes.
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
    on_revoke: Callable[[], None] | None = None  # set for watched streams: called instead of cancelling ``scope``

    def revoke(self) -> None:
        """Access is gone: end the connection (its cancel scope, or its own way for watched streams)."""
        self.revoked = True
        if self.on_revoke is not None:
            self.on_revoke()
        else:
            self.scope.cancel()

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
            self._drop(session)
            self.on_change()

    @contextmanager
    def watch(
        self, workspace_id: str, owner_id: int | None, principal: Principal, need: Level, on_revoke: Callable[[], None]
    ) -> Iterator[Session]:
        """Watch a stream that is not a presence (an SSE stream) while the body runs: ``on_revoke`` is called
        when its principal loses the level it needs."""
        session = Session(workspace_id, owner_id, principal, need, on_revoke=on_revoke)
        self._open.setdefault(workspace_id, set()).add(session)
        try:
            yield session
        finally:
            self._drop(session)

    def _drop(self, session: Session) -> None:
        held = self._open.get(session.workspace_id)
        if held is not None:
            held.discard(session)
            if not held:
                del self._open[session.workspace_id]

    def present(self, workspace_id: str) -> dict[tuple[int, str], int]:
        """Open connections to the workspace by (user id, username); watched streams are not presences."""
        counts: dict[tuple[int, str], int] = {}
        for session in self._open.get(workspace_id, ()):
            if session.on_revoke is not None:
                continue
            key = (session.principal.user_id, session.principal.username)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def workspaces(self) -> list[str]:
        """The workspaces someone is connected to (or watches a stream of) through this process."""
        return list(self._open)

    async def recheck(self, workspace_id: str, level_of: Callable[[Session], Awaitable[Level | None]]) -> int:
        """Close the workspace's connections whose principal no longer has the level they need; how many."""
        closed = 0
        for session in list(self._open.get(workspace_id, ())):
            if session.principal.is_admin or session.principal.user_id == session.owner_id:
                continue
            level = await level_of(session)
            if level is None or level < session.need:
                session.revoke()
                closed += 1
        return closed
