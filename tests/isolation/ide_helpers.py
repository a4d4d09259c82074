"""What the IDE-secret attacks share: the workspace row (endpoint, generation), direct requests to the IDE's
port past the hub, and the credential a start's generation has."""

from __future__ import annotations

import uuid

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app import db
from app.models import Workspace
from app.services.runtime.ide_secret import IdeSecrets
from app.settings import Settings

CODE_SERVER_SOCKET_QUERY = "reconnection=false&skipWebSocketFrames=false"


async def workspace_row(settings: Settings, workspace_id: str) -> Workspace:
    """The workspace's row as stored (endpoint and generation are not in the API)."""
    engine = db.create_engine(settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            row = await session.get(Workspace, workspace_id)
    finally:
        await engine.dispose()
    assert row is not None
    return row


def credential(settings: Settings, workspace_id: str, generation: int) -> str:
    """The IDE secret of that start, as any hub process derives it."""
    cookie = IdeSecrets.from_settings(settings).cookie(workspace_id, generation)
    assert cookie is not None
    return cookie.decode().partition("=")[2]


async def direct_get(endpoint: str, path: str, cookie: str | None = None) -> httpx.Response:
    """A request straight to the IDE's port (no redirects followed), with ``Cookie: cookie`` when given."""
    headers = {"Cookie": cookie} if cookie is not None else {}
    async with httpx.AsyncClient(base_url=f"http://{endpoint}", trust_env=False, timeout=10) as client:
        return await client.get(path, headers=headers)


async def upgrade_status(url: str, headers: dict[str, str] | None = None, origin: str | None = None) -> int:
    """101 when the WebSocket upgrade to ``url`` is accepted, else the HTTP status it was refused with."""
    try:
        async with connect(url, additional_headers=headers or {}, origin=origin, open_timeout=15):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def socket_path(path: str = "/") -> str:
    """A path with the query code-server's page opens its WebSocket with (a fresh reconnection token)."""
    return f"{path}?reconnectionToken={uuid.uuid4()}&{CODE_SERVER_SOCKET_QUERY}"
