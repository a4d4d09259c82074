"""Presence across hub processes: two hub apps on one database and one Redis (subdomain mode, local runtime,
the programmable upstream as the IDE). A grantee's terminal opened through hub A shows in hub B's ``present``
list and leaves it when closed; a process that dies without cleaning up (a real one, killed with SIGKILL)
stops counting once its entries' deadline passes. Without Redis the list is this process's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from app.factory import create_app
from app.settings import Settings
from app.streams.relay.splice import SpliceProtocol
from tests.support.databases import fresh_database
from tests.support.lifecycle import wait_state
from tests.support.relay import upstream_command
from tests.support.server import Hub, admin_token, free_port, serve_asgi
from tests.support.services import need_redis
from tests.support.settings import make_settings
from tests.support.terminal import open_terminal, read_until

pytestmark = pytest.mark.anyio

DOMAIN = "ws.localhost"


@dataclass
class Pair:
    """Two hub processes of one deployment, alice's running workspace, and the users' tokens and ids."""

    a: Hub
    b: Hub
    ws: str
    tokens: dict[str, str]
    ids: dict[str, int]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def presence_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database shared by both hubs."""
    with fresh_database(request.param, tmp_path_factory.mktemp("presencedb")) as url:
        yield url


def settings_for(data: Any, database_url: str, redis_url: str, port: int) -> Settings:
    """One deployment's settings (both hubs share them, as two replicas behind one address would)."""
    return make_settings(
        data,
        public_url=f"http://127.0.0.1:{port}",
        database_url=database_url,
        redis_url=redis_url,
        runtime="local",
        local_ide_command=upstream_command(),
        start_timeout=20,
        idle_timeout=0,
        workspace_domain=DOMAIN,
    )


@pytest.fixture(scope="module")
async def pair(presence_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    """Hubs A and B; alice owns a running workspace shared with ``user`` at ``use``."""
    port = free_port()
    settings = settings_for(tmp_path_factory.mktemp("data"), presence_db, need_redis(), port)
    token = await admin_token(settings)
    async with (
        serve_asgi(create_app(settings), port=port, ws=SpliceProtocol) as url_a,
        serve_asgi(create_app(settings), ws=SpliceProtocol) as url_b,
    ):
        a, b = Hub(url_a, settings, token), Hub(url_b, settings, token)
        tokens = {name: await a.new_user(name) for name in ("alice", "user")}
        ids = {}
        for name, raw in tokens.items():
            async with a.client(raw) as client:
                ids[name] = (await client.get("/api/auth/me")).json()["id"]
        async with a.client(tokens["alice"]) as client:
            ws = (await client.post("/api/workspaces", json={"name": "present"})).json()["id"]
            await client.post(f"/api/workspaces/{ws}/start")
            assert (await wait_state(client, ws, {"running", "failed"}))["state"] == "running"
            body = {"subject_kind": "user", "subject_id": ids["user"], "level": "use"}
            assert (await client.post(f"/api/workspaces/{ws}/grants", json=body)).status_code == 201
        yield Pair(a, b, ws, tokens, ids)
        async with a.client(tokens["alice"]) as client:
            await client.post(f"/api/workspaces/{ws}/stop")


async def present(hub: Hub, pair: Pair) -> list[dict[str, Any]]:
    """``present`` of the shared workspace, as its owner reads it from ``hub``."""
    async with hub.client(pair.tokens["alice"]) as client:
        r = await client.get(f"/api/workspaces/{pair.ws}/grants")
        assert r.status_code == 200, r.text
        return list(r.json()["present"])


async def eventually(hub: Hub, pair: Pair, expected: list[tuple[str, int]], timeout: float = 5) -> None:
    """Wait until ``hub`` lists exactly ``expected`` (username, connections)."""
    seen: list[tuple[str, int]] = []
    with anyio.move_on_after(timeout):
        while True:
            seen = [(p["username"], p["connections"]) for p in await present(hub, pair)]
            if seen == expected:
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"{hub.url} lists {seen}, expected {expected}")


async def test_a_connection_through_one_hub_shows_in_the_other(pair: Pair) -> None:
    await eventually(pair.b, pair, [])
    async with open_terminal(pair.a.url, pair.ws, pair.tokens["user"]) as term:
        await term.send("echo here-$((6*7))\r")
        await read_until(term, "here-42")
        assert [(p["username"], p["connections"]) for p in await present(pair.a, pair)] == [("user", 1)]
        await eventually(pair.b, pair, [("user", 1)])
        async with open_terminal(pair.a.url, pair.ws, pair.tokens["alice"]) as second:
            await second.send("echo also-$((6*7))\r")
            await read_until(second, "also-42")
            await eventually(pair.b, pair, [("alice", 1), ("user", 1)])
        await eventually(pair.b, pair, [("user", 1)])
    await eventually(pair.b, pair, [])
    await eventually(pair.a, pair, [])


WRITER = textwrap.dedent(
    """
    import sys
    import anyio
    from redis.asyncio import Redis
    from app.services.auth.access import Level, Principal
    from app.streams.relay.presence import Presence
    from app.streams.relay.sessions import Sessions

    async def main(url, prefix, workspace_id, user_id):
        sessions = Sessions()
        presence = Presence(sessions, Redis.from_url(url), prefix, ttl=1.5)
        principal = Principal(int(user_id), "ghost", "user", "t", "api")
        with sessions.hold(workspace_id, None, principal, Level.USE):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(presence.run)
                await anyio.sleep(0.5)
                print("ready", flush=True)
                await anyio.sleep_forever()

    anyio.run(main, *sys.argv[1:])
    """
)


async def test_a_process_that_dies_stops_counting_after_its_ttl(pair: Pair) -> None:
    settings = pair.a.settings
    argv = [sys.executable, "-c", WRITER, settings.redis_url, settings.redis_prefix, pair.ws, "999999"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == b"ready", line
        await eventually(pair.b, pair, [("ghost", 1)])
        await eventually(pair.a, pair, [("ghost", 1)])
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup: its entry stays in Redis until its deadline
        proc.wait(5)
        assert [p["username"] for p in await present(pair.b, pair)] == ["ghost"]
        await eventually(pair.b, pair, [], timeout=4)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def solo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the hub without Redis (migrations run their own event loop: a sync fixture)."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("solo")) as url:
        yield url


async def test_without_redis_presence_is_this_process_s(solo_db: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    settings = settings_for(tmp_path_factory.mktemp("solo-data"), solo_db, "", port)
    token = await admin_token(settings)
    async with serve_asgi(create_app(settings), port=port, ws=SpliceProtocol) as base:
        hub = Hub(base, settings, token)
        tokens = {name: await hub.new_user(name) for name in ("alice", "user")}
        async with hub.client(tokens["user"]) as client:
            uid = (await client.get("/api/auth/me")).json()["id"]
        async with hub.client(tokens["alice"]) as client:
            ws = (await client.post("/api/workspaces", json={"name": "solo"})).json()["id"]
            await client.post(f"/api/workspaces/{ws}/start")
            assert (await wait_state(client, ws, {"running", "failed"}))["state"] == "running"
            body = {"subject_kind": "user", "subject_id": uid, "level": "use"}
            assert (await client.post(f"/api/workspaces/{ws}/grants", json=body)).status_code == 201
        solo = Pair(hub, hub, ws, tokens, {})
        async with open_terminal(base, ws, tokens["user"]) as term:
            await term.send("echo solo\r")
            await read_until(term, "solo")
            assert [(p["username"], p["connections"]) for p in await present(hub, solo)] == [("user", 1)]
        await eventually(hub, solo, [])
        async with hub.client(tokens["alice"]) as client:
            await client.post(f"/api/workspaces/{ws}/stop")
