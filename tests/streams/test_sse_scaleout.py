"""Scale-out and outages over HTTP: two real hub processes on one Redis + Postgres; Redis killed mid-stream."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from app.settings import Settings
from tests.support.event_hubs import delete_prefix, private_redis
from tests.support.server import Hub, admin_token, free_port, running_hub
from tests.support.services import need_redis
from tests.support.settings import make_settings
from tests.support.sse_client import open_sse

pytestmark = pytest.mark.anyio


def settings_env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(settings.data_dir),
        CODEHUB_DATABASE_URL=settings.database_url,
        CODEHUB_REDIS_URL=settings.redis_url,
        CODEHUB_REDIS_PREFIX=settings.redis_prefix,
        CODEHUB_HUB_ID=settings.hub_id,
        CODEHUB_RUNTIME="local",
        CODEHUB_DOCKER_URL="none",
        CODEHUB_LOG_LEVEL="warning",
        CODEHUB_PORT=str(port),
    )
    return env


@asynccontextmanager
async def hub_processes(settings: Settings, count: int) -> AsyncIterator[list[str]]:
    """``count`` ``codehub serve`` processes on free ports (started together); yields their URLs once
    each ``/ready`` answers 200."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(count):
            port = free_port()
            cmd = [sys.executable, "-m", "app", "serve"]
            procs.append(subprocess.Popen(cmd, env=settings_env(settings, port)))
            urls.append(f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient(timeout=5) as client:
            with anyio.fail_after(60):
                for proc, url in zip(procs, urls, strict=True):
                    while True:
                        assert proc.poll() is None, "codehub serve exited"
                        try:
                            if (await client.get(f"{url}/ready")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await anyio.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_two_hub_processes_share_events_and_resume_on_the_other(tmp_path: Path, postgres_url: str) -> None:
    redis_url = need_redis()
    settings = make_settings(tmp_path / "data", database_url=postgres_url, redis_url=redis_url)
    token = await admin_token(settings)
    try:
        async with hub_processes(settings, 2) as (url_a, url_b):
            hub_a, hub_b = Hub(url_a, settings, token), Hub(url_b, settings, token)
            baseline = {}
            for hub in (hub_a, hub_b):  # internal listeners (e.g. the relay) subscribe too
                async with hub.client() as admin:
                    baseline[hub.url] = (await admin.get("/api/admin/events/stats")).json()["subscribers"]
            user = await hub_a.new_user("scale")
            async with hub_a.client(user) as a, hub_b.client(user) as b:
                me = (await b.get("/api/auth/me")).json()["id"]
                params = {"topic": f"user:{me}"}
                async with open_sse(b, "/api/events", params=params) as on_b:
                    ws = (await a.post("/api/workspaces", json={"name": "x"})).json()
                    await a.patch(f"/api/workspaces/{ws['id']}", json={"name": "y"})
                    seen = await on_b.events(2)
                assert [f.event for f in seen] == ["workspace.created", "workspace.updated"]
                # away: events published through B while the client is gone
                await b.patch(f"/api/workspaces/{ws['id']}", json={"name": "z"})
                await b.delete(f"/api/workspaces/{ws['id']}")
                async with open_sse(a, "/api/events", params=params, last_event_id=seen[-1].id) as on_a:
                    missed = await on_a.events(2)
                    assert [f.event for f in missed] == ["workspace.updated", "workspace.deleted"]
                    assert int(missed[0].id) > int(seen[-1].id)
                    again = (await b.post("/api/workspaces", json={"name": "w"})).json()
                    (live,) = await on_a.events(1)
                assert live.event == "workspace.created" and live.data["data"]["workspace_id"] == again["id"]
            for hub in (hub_a, hub_b):
                async with hub.client() as admin:
                    with anyio.fail_after(10):
                        while (await admin.get("/api/admin/events/stats")).json()["subscribers"] > baseline[hub.url]:
                            await anyio.sleep(0.05)
    finally:
        await delete_prefix(redis_url, settings.redis_prefix)


async def test_redis_outage_over_http_rest_works_sse_resets_and_everything_recovers(
    tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path / "data",
        database_url=sqlite_url,
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_prefix=f"codehub-test-{secrets.token_hex(6)}",
        sse_retry_ms=100,
    )
    with private_redis(port) as server:
        async with running_hub(settings) as hub:
            user = await hub.new_user("outage")
            async with hub.client(user) as client:
                me = (await client.get("/api/auth/me")).json()["id"]
                params = {"topic": f"user:{me}"}
                async with open_sse(client, "/api/events", params=params) as stream:
                    ws = (await client.post("/api/workspaces", json={"name": "a"})).json()
                    (created,) = await stream.events(1)
                    server.kill()
                    server.wait()
                    tail = await stream.rest()
                assert [(f.event, f.data["data"]["reason"]) for f in tail] == [("stream.reset", "hub_unavailable")]
                assert tail[0].id is None

                # REST keeps working; the lost notification is logged, not raised
                assert (await client.get("/api/workspaces")).status_code == 200
                assert (await client.patch(f"/api/workspaces/{ws['id']}", json={"name": "b"})).status_code == 200
                ready = await client.get("/ready")
                assert ready.status_code == 503
                failing = {c["name"] for c in ready.json()["checks"] if not c["ok"]}
                assert "events" in failing
                # an SSE client arriving now is told to come back, not left hanging
                async with open_sse(client, "/api/events", params=params, last_event_id=created.id) as down:
                    frames = await down.rest()
                assert [f.data["data"]["reason"] for f in frames] == ["hub_unavailable"]

                with private_redis(port):
                    with anyio.fail_after(20):
                        while (await client.get("/ready")).status_code != 200:
                            await anyio.sleep(0.1)
                    async with open_sse(client, "/api/events", params=params, last_event_id=created.id) as back:
                        (reset,) = await back.events(1)
                        await client.patch(f"/api/workspaces/{ws['id']}", json={"name": "c"})
                        (update,) = await back.events(1)
                    # the private Redis lost its data: the old cursor is unknown, the client refetches
                    assert reset.event == "stream.reset" and reset.data["data"]["reason"] == "unknown_cursor"
                    assert update.event == "workspace.updated" and update.data["data"]["name"] == "c"
