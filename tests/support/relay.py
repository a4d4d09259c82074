"""Relay test helpers: the programmable upstream as a process, and a hub whose local IDE is that upstream."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update

from app import db
from app.factory import create_app
from app.models import Workspace
from app.streams.relay.splice import SpliceProtocol
from tests.support.server import Hub, admin_token, free_port, serve_asgi
from tests.support.settings import make_settings

UPSTREAM_APP = Path(__file__).resolve().with_name("upstream_app.py")


def upstream_command() -> str:
    """``local_ide_command`` running the programmable upstream as a workspace's IDE."""
    return f"{sys.executable} {UPSTREAM_APP} --port {{port}} {{dir}}"


@contextmanager
def upstream_process() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run the programmable upstream on a free port; yields the process and its ``host:port``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(UPSTREAM_APP), "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the upstream did not start")
            time.sleep(0.05)
        yield proc, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class RelayHub(Hub):
    """A running hub plus what relay tests need: its app (for the relay's counters) and two users."""

    app: Any = None
    alice: str = ""
    bob: str = ""
    ws_url: str = field(default="")
    mode: str = "splice"

    @property
    def relay(self) -> Any:
        """The hub's ``Relay``."""
        return self.app.state.ctx.relay

    async def set_row(self, workspace_id: str, **values: Any) -> None:
        """Change a workspace row directly (as the lifecycle would) and drop the relay's cached route."""
        engine = db.create_engine(self.settings)
        try:
            async with db.create_sessionmaker(engine)() as session:
                await session.execute(update(Workspace).where(Workspace.id == workspace_id).values(**values))
                await session.commit()
        finally:
            await engine.dispose()
        self.relay.routes.forget(workspace_id)

    async def workspace(self, token: str, name: str, endpoint: str | None, state: str = "running") -> str:
        """Create a workspace owned by ``token``'s user, pointed at ``endpoint`` in ``state``."""
        async with self.client(token) as client:
            r = await client.post("/api/workspaces", json={"name": name})
            assert r.status_code == 201, r.text
            workspace_id = r.json()["id"]
        await self.set_row(workspace_id, state=state, endpoint=endpoint)
        return workspace_id


@asynccontextmanager
async def start_relay_hub(relay_db: str, data_dir: Path, mode: str = "splice") -> AsyncIterator[RelayHub]:
    """A hub (local runtime whose IDE is the programmable upstream) with users alice and bob.

    ``mode`` ``splice`` serves WebSockets as ``codehub serve`` does (``SpliceProtocol``: sockets joined after
    the handshake); ``frames`` uses uvicorn's plain sans-I/O protocol, so the relay passes messages.
    """
    settings = make_settings(
        data_dir,
        database_url=relay_db,
        runtime="local",
        local_ide_command=upstream_command(),
        start_timeout=20,
        idle_timeout=0,
    )
    token = await admin_token(settings)
    app = create_app(settings)
    ws: Any = SpliceProtocol if mode == "splice" else "websockets-sansio"
    async with serve_asgi(app, ws=ws) as url:
        hub = RelayHub(url, settings, token, app=app, ws_url=url.replace("http://", "ws://"), mode=mode)
        hub.alice = await hub.new_user("alice")
        hub.bob = await hub.new_user("bob")
        yield hub
