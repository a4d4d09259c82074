"""The web terminal: ``WS /ws/workspaces/{id}`` runs an interactive shell in a running workspace.

The runtime opens the shell (``open_terminal``: ``docker exec`` with a TTY, or a pty for local processes);
this module joins it to the WebSocket. Protocol:

- browser → hub: binary frames are keystrokes; text frames are keystrokes too, unless they are a JSON
  control message: ``{"type": "resize", "cols": 120, "rows": 40}`` or ``{"type": "input", "data": "ls\\r"}``.
- hub → browser: binary frames of terminal output, as the shell writes it (xterm.js takes bytes).
- when the shell exits: a text frame ``{"type": "exit", "exit_code": N}``, then close 1000 ``exit N``.
  Closing the WebSocket hangs up the shell (SIGHUP to its process group).

Initial size from the query (``?cols=&rows=``). Access as for the relay: owner and admins, cookie or Bearer,
the origin rule for the cookie; refusals happen before the upgrade (401, 403, 404, 409).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import anyio
import msgspec

from app.errors import DomainError
from app.models import Workspace, WorkspaceState
from app.services.auth.access import (
    Credentials,
    IdeAccess,
    Level,
    audit_entry,
    cross_origin_refusal,
    ide_access,
    identify,
)
from app.streams.relay.deps import RelayDeps
from app.streams.relay.sessions import REVOKED_CODE, REVOKED_REASON, Sessions
from app.streams.relay.stats import Activity, RelayStats
from app.streams.relay.ws import deny

log = logging.getLogger(__name__)

MAX_COLS = 1000
MAX_ROWS = 500


class Control(msgspec.Struct, forbid_unknown_fields=False):
    """A JSON control message from the browser."""

    type: str
    cols: int = 0
    rows: int = 0
    data: str = ""


_decode_control = msgspec.json.Decoder(Control).decode


@dataclass(frozen=True, slots=True)
class TerminalDeps:
    """The hub's services, and what the terminal shares with the relay: counters and activity."""

    hub: RelayDeps
    stats: RelayStats
    activity: Activity
    sessions: Sessions


def _size(query: bytes) -> tuple[int, int]:
    values = dict(parse_qsl(query.decode("latin-1")))
    try:
        cols = int(values.get("cols", 80))
        rows = int(values.get("rows", 24))
    except ValueError:
        return 80, 24
    return max(1, min(cols, MAX_COLS)), max(1, min(rows, MAX_ROWS))


async def serve_terminal(deps: TerminalDeps, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Authorize, open the shell, accept the WebSocket and pump until either side ends."""
    workspace_id = scope["path"].removeprefix("/ws/workspaces/").strip("/")
    credentials = Credentials.of(scope)
    principal = await identify(credentials, deps.hub.auth)
    if principal is None:
        await deny(scope, send, 401, "sign in first")
        return
    refusal = cross_origin_refusal(scope, credentials, deps.hub.settings)
    if refusal is not None:
        await deny(scope, send, refusal.status, f"{refusal.code}: {refusal.detail}")
        return
    try:
        ws: Workspace = await deps.hub.workspaces.get(principal, workspace_id, Level.USE)
    except DomainError as exc:
        await deny(
            scope, send, 403 if exc.status == 403 else 404, exc.detail if exc.status == 403 else "no such workspace"
        )
        return
    granted = await deps.hub.workspaces.grants.level_of(ws.id, principal.user_id)
    access = ide_access(principal, ws.owner_id, admin_path_access=deps.hub.settings.admin_path_access, granted=granted)
    if access in (IdeAccess.REFUSED, IdeAccess.HIDDEN):
        await deny(scope, send, 403 if access == IdeAccess.REFUSED else 404, "not your workspace")
        return
    if access == IdeAccess.IMPERSONATE:
        log.warning("admin %s opened a terminal in workspace %s of user %s", principal.username, ws.id, ws.owner_id)
        entry = audit_entry(scope, "workspace.impersonate", principal, workspace_id=ws.id, target=ws.name)
        await deps.hub.audit.record(entry)
    if ws.state != WorkspaceState.RUNNING:
        await deny(scope, send, 409, f"the workspace is {ws.state}")
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    cols, rows = _size(scope.get("query_string", b""))
    try:
        runtime = await deps.hub.engines.for_workspace(ws)
        terminal = await runtime.open_terminal(ws.id, cols=cols, rows=rows)
    except DomainError as exc:
        await deny(scope, send, 409 if exc.status == 409 else 502, exc.detail)
        return
    await deps.hub.audit.record(audit_entry(scope, "terminal.open", principal, workspace_id=ws.id, target=ws.name))
    counters = deps.stats.of(ws.id, ws.server_id)
    counters.terminals_open += 1
    try:
        await send({"type": "websocket.accept"})
        with deps.sessions.hold(ws.id, ws.owner_id, principal, Level.USE) as held:
            await _pump(terminal, receive, send, lambda: deps.activity.note(ws.id, "terminal"), counters)
        if held.revoked:
            counters.closed("hub", REVOKED_CODE)
            await send({"type": "websocket.close", "code": REVOKED_CODE, "reason": REVOKED_REASON})
    finally:
        counters.terminals_open -= 1
        with anyio.CancelScope(shield=True):
            await terminal.close()


async def _pump(terminal: Any, receive: Any, send: Any, note: Any, counters: Any) -> None:
    async with anyio.create_task_group() as tg:

        async def keys() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    counters.closed("client", message.get("code", 1005))
                    tg.cancel_scope.cancel()
                    return
                data = message.get("bytes")
                text = message.get("text")
                if text is not None:
                    control = _control(text)
                    if control is not None:
                        if control.type == "resize" and control.cols > 0 and control.rows > 0:
                            await terminal.resize(min(control.cols, MAX_COLS), min(control.rows, MAX_ROWS))
                            continue
                        data = control.data.encode()
                    else:
                        data = text.encode()
                if data:
                    counters.bytes_up += len(data)
                    note()
                    await terminal.send(data)

        tg.start_soon(keys)
        while True:
            output = await terminal.receive()
            if not output:
                break
            counters.bytes_down += len(output)
            note()
            try:
                await send({"type": "websocket.send", "bytes": output})
            except OSError:  # the browser left; ``keys`` sees the disconnect
                await anyio.sleep_forever()
        code = await _exit_code(terminal)
        counters.closed("shell", 1000)
        try:
            exit_message = msgspec.json.encode({"type": "exit", "exit_code": code}).decode()
            await send({"type": "websocket.send", "text": exit_message})
            await send({"type": "websocket.close", "code": 1000, "reason": f"exit {code}"})
        except OSError:
            pass
        tg.cancel_scope.cancel()


def _control(text: str) -> Control | None:
    if not text.startswith("{"):
        return None
    try:
        control = _decode_control(text)
    except msgspec.DecodeError:
        return None
    return control if control.type in ("resize", "input") else None


async def _exit_code(terminal: Any) -> int | None:
    """The shell's exit status (Docker reports it a moment after the stream ends)."""
    getter = getattr(terminal, "exit_code", None)
    if getter is None:
        return None
    for _ in range(20):
        code: int | None = await getter()
        if code is not None:
            return code
        await anyio.sleep(0.05)
    return None
