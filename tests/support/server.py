"""Run the real app on a real uvicorn server inside the caller's task group, on a free loopback port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import uvicorn

from app import db
from app.factory import create_app
from app.services.auth.users import AuthService
from app.settings import Settings
from app.streams.events.direct_http import DirectHttpProtocol


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def serve_asgi(
    app, *, port: int | None = None, ws: str = "websockets-sansio", http=DirectHttpProtocol
) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    """Serve ``app`` with uvicorn until the block ends; yields ``http://127.0.0.1:<port>``.

    HTTP is served as ``codehub serve`` does (``DirectHttpProtocol``: live SSE frames written by the fan-out);
    pass ``http="httptools"`` for plain uvicorn (SSE through ASGI only)."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws=ws,
        http=http,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(20):
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("uvicorn failed to start")
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True  # serve() returns after a graceful shutdown; the task group waits for it


@dataclass
class Hub:
    """A running hub: its URL, settings, and an admin's token."""

    url: str
    settings: Settings
    admin_token: str

    def client(self, token: str | None = None, **kwargs) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
        """An httpx client for the hub, authenticated with ``token`` (default: the admin's)."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"} if token != "" else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)

    async def new_user(self, username: str, *, admin: bool = False, password: str = "password-123") -> str:
        """Create a user through the admin API and return a fresh API token for it."""
        async with self.client() as client:
            r = await client.post(
                "/api/admin/users",
                json={"username": username, "password": password, "role": "admin" if admin else "user"},
            )
            r.raise_for_status()
        async with httpx.AsyncClient(base_url=self.url) as anon:
            r = await anon.post("/api/auth/login", json={"username": username, "password": password})
            r.raise_for_status()
            session = r.json()["token"]
        async with self.client(session) as client:
            r = await client.post("/api/auth/tokens", json={"name": "test"})
            r.raise_for_status()
            return r.json()["token"]


async def admin_token(settings: Settings, username: str = "admin") -> str:
    """Create an admin directly in the database (as ``codehub create-user --admin`` does) and return a token."""
    engine = db.create_engine(settings)
    try:
        auth = AuthService(db.create_sessionmaker(engine), settings)
        user = await auth.create_user(username, "admin-password-1", "admin")
        _, raw = await auth.issue_token(user.id, name="test")
        return raw
    finally:
        await engine.dispose()


@asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Migrate-checked app on a real server with a first admin."""
    token = await admin_token(settings)
    async with serve_asgi(create_app(settings)) as url:
        yield Hub(url, settings, token)
