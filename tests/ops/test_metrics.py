"""GET /metrics over real HTTP: route templates (not raw paths), scrape-time gauges, the optional token,
answering while the database is down, and event streams measured to their headers."""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest

from tests.support.databases import admin_dsn
from tests.support.promtext import sample_value
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


async def test_routes_are_templates_and_workspaces_are_counted(hub: Hub) -> None:
    token = await hub.new_user(f"metrics-{secrets.token_hex(3)}")
    async with hub.client(token) as client:
        ws = (await client.post("/api/workspaces", json={"name": "metered"})).json()
        for _ in range(3):
            assert (await client.get(f"/api/workspaces/{ws['id']}")).status_code == 200
        missing = "zz" + secrets.token_hex(5)
        assert (await client.get(f"/api/workspaces/{missing}")).status_code == 404
    async with httpx.AsyncClient(base_url=hub.url) as anon:
        r = await anon.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert ws["id"] not in text and missing not in text  # raw paths never become labels
    route = "/api/workspaces/{workspace_id}"
    assert sample_value(text, "codehub_http_requests_total", method="GET", route=route, status="200") >= 3
    assert sample_value(text, "codehub_http_requests_total", method="GET", route=route, status="404") >= 1
    assert sample_value(text, "codehub_http_request_duration_seconds_count", method="GET", route=route) >= 4
    assert sample_value(text, "codehub_dependency_up", name="database") == 1.0
    assert sample_value(text, "codehub_event_hub_up") == 1.0
    assert sample_value(text, "codehub_events_published_total") >= 1
    async with hub.client() as admin:
        everyone = (await admin.get("/api/workspaces", params={"all": "true", "limit": 200})).json()["items"]
    by_state: dict[str, int] = {}
    for w in everyone:
        by_state[w["state"]] = by_state.get(w["state"], 0) + 1
    for state, count in by_state.items():
        assert sample_value(text, "codehub_workspaces", state=state) == count
    assert sample_value(text, "codehub_workspaces", state="failed") == by_state.get("failed", 0)


async def test_event_stream_latency_is_time_to_headers(hub: Hub) -> None:
    async with hub.client() as client:
        me = (await client.get("/api/auth/me")).json()
        async with client.stream("GET", "/api/events", params={"topic": f"user:{me['id']}"}) as stream:
            assert stream.status_code == 200
            await anyio.sleep(1.2)
        text = (await client.get("/metrics")).text
    count = sample_value(text, "codehub_http_request_duration_seconds_count", method="GET", route="/api/events")
    total = sample_value(text, "codehub_http_request_duration_seconds_sum", method="GET", route="/api/events")
    assert count and count >= 1
    assert total is not None and total / count < 1.0, "the stream's lifetime leaked into the latency histogram"


async def test_metrics_token(tmp_path: Path, sqlite_url: str) -> None:
    secret = secrets.token_urlsafe(16)
    settings = make_settings(tmp_path, database_url=sqlite_url, metrics_token=secret)
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as anon:
        assert (await anon.get("/metrics")).status_code == 401
        assert (await anon.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        # a user's API token is not the metrics token
        assert (await anon.get("/metrics", headers={"Authorization": f"Bearer {hub.admin_token}"})).status_code == 401
        r = await anon.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200 and "codehub_http_requests_total" in r.text


async def test_metrics_answer_while_the_database_is_down(tmp_path: Path, postgres_url: str) -> None:
    settings = make_settings(tmp_path, database_url=postgres_url)
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url, timeout=30) as anon:
        assert sample_value((await anon.get("/metrics")).text, "codehub_dependency_up", name="database") == 1
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{postgres_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        r = await anon.get("/metrics")
        assert r.status_code == 200
        assert sample_value(r.text, "codehub_dependency_up", name="database") == 0
        assert (await anon.get("/ready")).status_code == 503


async def test_refused_tokens_are_counted_and_logged_by_route(hub: Hub) -> None:
    async with hub.client("not-a-token") as client:
        before = sample_value(
            (await client.get("/metrics")).text,
            "codehub_http_requests_total",
            method="GET",
            route="/api/workspaces/{workspace_id}",
            status="401",
        )
        assert (await client.get("/api/workspaces/abc123")).status_code == 401
        after = sample_value(
            (await client.get("/metrics")).text,
            "codehub_http_requests_total",
            method="GET",
            route="/api/workspaces/{workspace_id}",
            status="401",
        )
    assert (after or 0) == (before or 0) + 1
