"""Revoking a grant ends the grantee's open SSE streams of that workspace, in every hub process.

Real uvicorn servers in subdomain mode: one hub alone (in-process events), and two hubs on one database and
one Redis (the revocation made through hub A, the streams open on hub B). The grantee's streams end within
seconds with a final ``stream.reset`` (reason ``access_revoked``); the owner's stream and a stream the
narrowed grant still allows keep running.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from app.factory import create_app
from tests.support.databases import fresh_database
from tests.support.server import Hub, admin_token, free_port, serve_asgi
from tests.support.services import need_redis
from tests.support.settings import make_settings
from tests.support.sse_client import Frame, SSEStream, open_sse

pytestmark = pytest.mark.anyio

DOMAIN = "ws.localhost"
ENDS_WITHIN = 5.0  # seconds


@dataclass
class Deployment:
    """The hub the owner uses (``a``), the hub the grantee's streams go through (``b``; the same hub when there
    is only one), alice's workspace and the users' tokens and ids."""

    a: Hub
    b: Hub
    ws: str
    tokens: dict[str, str]
    ids: dict[str, int]

    def client(self, user: str, hub: Hub | None = None) -> httpx.AsyncClient:
        """An API client as ``user`` on ``hub`` (default ``a``)."""
        return (hub or self.a).client(self.tokens[user])

    async def grant(self, kind: str, subject_id: int, level: str) -> None:
        """Alice shares her workspace."""
        async with self.client("alice") as alice:
            body = {"subject_kind": kind, "subject_id": subject_id, "level": level}
            r = await alice.post(f"/api/workspaces/{self.ws}/grants", json=body)
            assert r.status_code == 201, r.text

    async def revoke(self, kind: str, subject_id: int) -> None:
        """Alice takes the grant back (through hub ``a``)."""
        async with self.client("alice") as alice:
            r = await alice.delete(f"/api/workspaces/{self.ws}/grants/{kind}/{subject_id}")
            assert r.status_code == 204, r.text


@pytest.fixture(params=["one hub", "two hubs on one Redis"])
def topology(request: pytest.FixtureRequest) -> str:
    """One hub process alone, or two sharing Redis."""
    return str(request.param)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database shared by the hubs of the test."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
async def deployment(topology: str, database_url: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    """The hubs, users alice (owner), bob (grantee), carol (in group ``sse-team``), and alice's workspace."""
    redis_url = need_redis() if topology != "one hub" else ""
    port = free_port()
    settings = make_settings(
        tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        runtime="local",
        public_url=f"http://127.0.0.1:{port}",
        workspace_domain=DOMAIN,
    )
    token = await admin_token(settings)
    async with AsyncExitStack() as stack:
        a = Hub(await stack.enter_async_context(serve_asgi(create_app(settings), port=port)), settings, token)
        b = a
        if topology != "one hub":
            b = Hub(await stack.enter_async_context(serve_asgi(create_app(settings))), settings, token)
        tokens = {name: await a.new_user(name) for name in ("alice", "bob", "carol")}
        ids = {}
        for name, raw in tokens.items():
            async with a.client(raw) as client:
                ids[name] = (await client.get("/api/auth/me")).json()["id"]
        async with a.client(tokens["alice"]) as alice:
            ws = (await alice.post("/api/workspaces", json={"name": "sse-shared"})).json()["id"]
        yield Deployment(a, b, ws, tokens, ids)


async def _ending(stream: SSEStream) -> tuple[Frame, float]:
    """The stream's last event (it must end) and how long it took to end."""
    started = time.monotonic()
    frames = await stream.rest(timeout=ENDS_WITHIN)
    assert frames, "the stream ended without a frame"
    return frames[-1], time.monotonic() - started


async def _sees_access_change(stream: SSEStream) -> None:
    """The stream is still open: it receives the ``workspace.access_changed`` the change published."""
    with anyio.fail_after(ENDS_WITHIN):
        while (frame := await stream.next()).event != "workspace.access_changed":
            assert frame.event != "stream.reset", frame.data


async def test_revoking_ends_the_grantees_streams_with_a_reset(deployment: Deployment) -> None:
    d = deployment
    ws = d.ws
    await d.grant("user", d.ids["bob"], "use")
    async with (
        d.client("bob", d.b) as bob,
        d.client("alice", d.b) as alice,
        open_sse(bob, f"/api/workspaces/{ws}/events") as lifecycle,
        open_sse(bob, "/api/events", params={"topic": [f"workspace:{ws}:logs", f"user:{d.ids['bob']}"]}) as mixed,
        open_sse(alice, f"/api/workspaces/{ws}/events") as owners,
    ):
        await anyio.sleep(0.3)  # the streams are subscribed
        await d.revoke("user", d.ids["bob"])
        for stream in (lifecycle, mixed):
            last, took = await _ending(stream)
            assert last.event == "stream.reset" and last.data["data"]["reason"] == "access_revoked", last
            assert last.id is None and took < ENDS_WITHIN
        await _sees_access_change(owners)
        # and a new stream is refused
        assert (await bob.get(f"/api/workspaces/{ws}/events")).status_code == 404


async def test_narrowing_a_grant_ends_only_the_streams_it_no_longer_allows(deployment: Deployment) -> None:
    d = deployment
    ws = d.ws
    await d.grant("user", d.ids["bob"], "use")
    async with (
        d.client("bob", d.b) as bob,
        open_sse(bob, "/api/events", params={"topic": f"workspace:{ws}:exec"}) as exec_output,
        open_sse(bob, f"/api/workspaces/{ws}/events") as lifecycle,
    ):
        await anyio.sleep(0.3)
        await d.grant("user", d.ids["bob"], "view")  # the exec topic needs use
        last, _ = await _ending(exec_output)
        assert last.event == "stream.reset" and last.data["data"]["reason"] == "access_revoked"
        await _sees_access_change(lifecycle)


async def test_revoking_a_group_grant_ends_its_members_streams(deployment: Deployment) -> None:
    d = deployment
    async with d.a.client() as admin:
        gid = (await admin.post("/api/admin/groups", json={"name": "sse-team"})).json()["id"]
        assert (await admin.put(f"/api/admin/groups/{gid}/members/{d.ids['carol']}")).status_code == 204
    await d.grant("group", gid, "view")
    async with d.client("carol", d.b) as carol, open_sse(carol, f"/api/workspaces/{d.ws}/events") as stream:
        await anyio.sleep(0.3)
        await d.revoke("group", gid)
        last, _ = await _ending(stream)
        assert last.event == "stream.reset" and last.data["data"]["reason"] == "access_revoked"
