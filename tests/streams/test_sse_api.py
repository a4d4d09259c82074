"""The SSE endpoints on a real uvicorn server, with the in-process hub and with Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.event_hubs import delete_prefix
from tests.support.server import Hub, running_hub
from tests.support.services import need_redis
from tests.support.settings import make_settings
from tests.support.sse_client import open_sse

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module", params=["memory", "redis"])
def backend_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(event backend, migrated SQLite URL): one database per backend (migrations run synchronously)."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("db")) as url:
        yield request.param, url


@pytest.fixture(scope="module")
async def sse_hub(backend_db: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub server per backend, with short heartbeats."""
    backend, db_url = backend_db
    redis_url = need_redis() if backend == "redis" else ""
    prefix = f"codehub-test-{secrets.token_hex(6)}"
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=db_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        sse_heartbeat=0.5,
        sse_retry_ms=1500,
    )
    async with running_hub(settings) as hub:
        yield hub
    if redis_url:
        await delete_prefix(redis_url, prefix)


async def user_id(hub: Hub, token: str) -> int:
    async with hub.client(token) as client:
        return (await client.get("/api/auth/me")).json()["id"]


async def subscribers(hub: Hub) -> int:
    async with hub.client() as admin:
        return (await admin.get("/api/admin/events/stats")).json()["subscribers"]


async def wait_subscribers(hub: Hub, n: int) -> None:
    with anyio.fail_after(10):
        while await subscribers(hub) != n:
            await anyio.sleep(0.05)


async def test_workspace_events_stream_with_headers_retry_and_contract_frames(sse_hub: Hub) -> None:
    token = await sse_hub.new_user(f"u{secrets.token_hex(3)}")
    async with sse_hub.client(token) as client:
        ws = (await client.post("/api/workspaces", json={"name": "alpha"})).json()
        async with open_sse(client, f"/api/workspaces/{ws['id']}/events") as stream:
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            assert stream.response.headers["cache-control"] == "no-cache"
            assert stream.response.headers["x-accel-buffering"] == "no"
            first = await stream.next()
            assert first.retry == 1500 and first.event is None
            r = await client.patch(f"/api/workspaces/{ws['id']}", json={"name": "beta"})
            assert r.status_code == 200
            (frame,) = await stream.events(1)
        assert frame.event == "workspace.updated" and frame.id == frame.data["id"]
        assert set(frame.data) == {"id", "topic", "type", "at", "data"}
        assert frame.data["topic"] == f"workspace:{ws['id']}" and frame.data["data"]["name"] == "beta"


async def test_many_topics_on_one_connection_then_resume_with_last_event_id(sse_hub: Hub) -> None:
    token = await sse_hub.new_user(f"u{secrets.token_hex(3)}")
    me = await user_id(sse_hub, token)
    async with sse_hub.client(token) as client:
        one = (await client.post("/api/workspaces", json={"name": "one"})).json()
        params = {"topic": [f"user:{me}", f"workspace:{one['id']}"]}
        async with open_sse(client, "/api/events", params=params) as stream:
            await client.patch(f"/api/workspaces/{one['id']}", json={"name": "one-b"})
            two = (await client.post("/api/workspaces", json={"name": "two"})).json()
            got = await stream.events(2)
        assert [f.event for f in got] == ["workspace.updated", "workspace.created"]
        assert int(got[0].id) < int(got[1].id)  # the update reached two subscribed topics but came once
        await client.patch(f"/api/workspaces/{two['id']}", json={"name": "two-b"})
        await client.delete(f"/api/workspaces/{two['id']}")
        async with open_sse(client, "/api/events", params=params, last_event_id=got[-1].id) as resumed:
            missed = await resumed.events(2)
        assert [(f.event, f.data["data"]["workspace_id"]) for f in missed] == [
            ("workspace.updated", two["id"]),
            ("workspace.deleted", two["id"]),
        ]
        # ?last_event_id= works for a first connection; the header wins over it
        query = {**params, "last_event_id": got[0].id}
        async with open_sse(client, "/api/events", params=query) as from_query:
            assert [f.id for f in await from_query.events(3)] == [got[1].id, *(f.id for f in missed)]
        async with open_sse(client, "/api/events", params=query, last_event_id=missed[0].id) as both:
            assert [f.id for f in await both.events(1)] == [missed[1].id]


async def test_since_earliest_and_future_ids(sse_hub: Hub) -> None:
    token = await sse_hub.new_user(f"u{secrets.token_hex(3)}")
    async with sse_hub.client(token) as client:
        ws = (await client.post("/api/workspaces", json={"name": "e"})).json()
        url = f"/api/workspaces/{ws['id']}/events"
        async with open_sse(client, url, params={"since": "earliest"}) as stream:
            (created,) = await stream.events(1)
        assert created.event == "workspace.created"
        async with open_sse(client, url, last_event_id="99999999") as stream:
            reset, replayed = await stream.events(2)
        assert reset.event == "stream.reset" and reset.id is None
        assert reset.data["data"]["reason"] == "unknown_cursor" and replayed.id == created.id
        assert (await client.get(url, params={"since": "yesterday"})).status_code == 400


async def test_topics_are_authorized_at_subscribe_time(sse_hub: Hub) -> None:
    token = await sse_hub.new_user(f"u{secrets.token_hex(3)}")
    other = await sse_hub.new_user(f"o{secrets.token_hex(3)}")
    me = await user_id(sse_hub, token)
    async with sse_hub.client(other) as client:
        theirs = (await client.post("/api/workspaces", json={"name": "theirs"})).json()
    async with sse_hub.client(token) as client:
        cases = {
            ("admin",): 403,
            (f"user:{me + 1000}",): 403,
            (f"user:{me}", "admin"): 403,
            ("workspace:nope00000000",): 404,
            (f"workspace:{theirs['id']}",): 404,
            (f"workspace:{theirs['id']}:logs",): 404,
            ("workspace:x:bogus",): 400,
            ("ai:r1",): 404,
            ("bad topic",): 400,
            ("server:1",): 403,
        }
        for topics, status in cases.items():
            r = await client.get("/api/events", params={"topic": list(topics)})
            assert r.status_code == status, (topics, r.text)
        assert (await client.get("/api/events")).status_code == 400
        assert (await client.get(f"/api/workspaces/{theirs['id']}/events")).status_code == 404
        assert (await client.get("/api/admin/events/stats")).status_code == 403
    async with httpx.AsyncClient(base_url=sse_hub.url) as anonymous:
        assert (await anonymous.get("/api/events", params={"topic": f"user:{me}"})).status_code == 401
    async with sse_hub.client() as admin:
        params = {"topic": ["admin", f"workspace:{theirs['id']}:exec", f"user:{me}", "server:1"]}
        async with open_sse(admin, "/api/events", params=params) as stream:
            assert (await stream.next()).retry is not None


async def test_session_cookie_heartbeats_and_disconnect_cleanup(sse_hub: Hub) -> None:
    name = f"u{secrets.token_hex(3)}"
    token = await sse_hub.new_user(name)
    me = await user_id(sse_hub, token)
    baseline = await subscribers(sse_hub)  # internal listeners (e.g. the relay) subscribe too
    async with httpx.AsyncClient(base_url=sse_hub.url, timeout=30) as browser:  # as EventSource: the cookie
        login = await browser.post("/api/auth/login", json={"username": name, "password": "password-123"})
        assert login.status_code == 200
        params = {"topic": f"user:{me}"}
        async with open_sse(browser, "/api/events", params=params) as stream:
            await wait_subscribers(sse_hub, baseline + 1)
            comments: list[str] = []
            while not comments:
                comments = (await stream.next(timeout=5)).comments
            assert comments == ["ping"]
        await wait_subscribers(sse_hub, baseline)
