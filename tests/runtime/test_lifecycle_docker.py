"""Lifecycle, servers and reconciliation against real engines (test image), SQLite and Postgres.

Start, stop and restart with the files kept, and the idle stop, run on the Docker engine and on the Kubernetes
test cluster alike (``engine_hub``, over the ``engine`` fixture); the rest is about Docker servers."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from app.factory import create_app
from tests.support.databases import fresh_database
from tests.support.lifecycle import create, event_history, types, wait_state
from tests.support.runtime import Engine, containers, remove_hub_containers
from tests.support.server import Hub, running_hub, serve_asgi
from tests.support.services import TEST_IMAGE, need_docker
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub on Docker; every container of its hub id is removed at the end."""
    settings = docker_settings(tmp_path_factory.mktemp("data"), db_url)
    try:
        async with running_hub(settings) as running:
            yield running
    finally:
        remove_hub_containers(settings.hub_id)


@pytest.fixture(scope="module")
def module_sqlite(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated SQLite database of its own for the module's hub on each engine."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="module")
async def engine_hub(
    engine: Engine, module_sqlite: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Engine, Hub]]:
    """A hub whose default server is ``engine``; what it made there is removed at the end."""
    settings = engine.settings(tmp_path_factory.mktemp("data"), module_sqlite, idle_warning=0.5)
    try:
        async with running_hub(settings) as running:
            yield engine, running
    finally:
        remove_hub_containers(settings.hub_id)


async def test_start_stop_restart_keep_the_files(engine_hub: tuple[Engine, Hub]) -> None:
    engine, hub = engine_hub
    async with hub.client() as client:
        ws = await create(client, "keeper")
        label, name = f"codehub.workspace={ws['id']}", f"codehub-{ws['id']}"
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        assert await engine.running(label) == [(name, True)]
        status = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()
        assert status["runtime"] == engine.kind and status["ide_healthy"] is True
        r = await client.put(
            f"/api/workspaces/{ws['id']}/files/content", params={"path": "kept.txt"}, content=b"kept\n"
        )
        assert r.status_code in (200, 201), r.text
        r = await client.post(
            f"/api/workspaces/{ws['id']}/execute", json={"command": "pwd; ls -ld .; echo more >> kept.txt"}
        )
        assert r.json()["stdout"].split()[0] == "/home/coder/project" and r.json()["exit_code"] == 0, r.text

        assert (await client.post(f"/api/workspaces/{ws['id']}/stop")).json()["state"] == "stopped"
        assert not any(running for _, running in await engine.running(label))
        assert await engine.homes(hub.settings.hub_id) in ([], [f"codehub-home-{ws['id']}"])
        r = await client.get(f"/api/workspaces/{ws['id']}/files/content", params={"path": "kept.txt"})
        assert r.status_code == 200 and r.json()["content"] == "kept\nmore\n", (
            r.text
        )  # read off the stopped workspace's home

        for action in ("start", "restart"):
            r = await client.post(f"/api/workspaces/{ws['id']}/{action}", params={"wait": "true"})
            assert r.json()["state"] == "running", r.text
            again = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()
            assert again["container_id"] != status["container_id"]
            status = again
            r = await client.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "cat kept.txt"})
            assert r.json()["stdout"] == "kept\nmore\n", r.text
            assert await engine.running(label) == [(name, True)]
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.running")
        assert types(events)[:3] == ["workspace.created", "workspace.placed", "workspace.starting"]

        r = await client.delete(f"/api/workspaces/{ws['id']}", params={"purge": "true"})
        assert r.status_code == 204
        assert await engine.running(label) == [] and await engine.homes(hub.settings.hub_id) == []


async def test_an_idle_workspace_is_warned_then_stopped(engine_hub: tuple[Engine, Hub]) -> None:
    engine, hub = engine_hub
    async with hub.client() as admin:
        body = {"name": "sleepy", "image": TEST_IMAGE, "max_memory_mb": 512, "default_memory_mb": 256}
        assert (await admin.post("/api/admin/templates", json={**body, "idle_timeout": 2})).status_code == 201
        ws = await create(admin, "nap", template="sleepy")
        r = await admin.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
        stopped = await wait_state(admin, ws["id"], {"stopped"}, timeout=30)
        assert stopped["state_reason"] == "idle"
        events = await event_history(admin, f"workspace:{ws['id']}", "workspace.stopped")
        pending = [e["data"] for e in events if e["type"] == "workspace.stop_pending"]
        assert pending and pending[0]["reason"] == "idle"
        assert not any(running for _, running in await engine.running(f"codehub.workspace={ws['id']}"))
        assert (await admin.delete(f"/api/workspaces/{ws['id']}")).status_code == 204


async def test_local_engine_is_the_default_server_and_runs_workspaces(hub: Hub) -> None:
    async with hub.client() as client:
        servers = (await client.get("/api/admin/servers")).json()
        local = next(s for s in servers if s["docker_url"] == hub.settings.docker_url)
        assert local["is_default"] and local["name"].startswith("local")
        ws = await create(client, "dock")
        assert ws["server_id"] == local["id"]
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.status_code == 200 and r.json()["state"] == "running", r.text

        [row] = containers(f"codehub.workspace={ws['id']}")
        assert row["Names"] == f"codehub-{ws['id']}" and row["State"] == "running"
        assert f"codehub.hub={hub.settings.hub_id}" in row["Labels"]
        status = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()
        assert status["memory_limit_bytes"] == 256 * MIB and status["pids"] >= 1
        assert status["ide_healthy"] is True and status["container_id"].startswith(row["ID"])
        assert status["server_id"] == local["id"] and status["runtime"] == "docker"

        r = await client.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "id -u; pwd"})
        assert r.json()["stdout"].split()[1] == "/home/coder/project"  # the project in the home volume
        listing = (await client.get("/api/admin/servers")).json()
        assert next(s for s in listing if s["id"] == local["id"])["running"] >= 1

        first_container = status["container_id"]
        assert (await client.post(f"/api/workspaces/{ws['id']}/stop")).json()["state"] == "stopped"
        assert containers(f"codehub.workspace={ws['id']}")[0]["State"] == "exited"
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running"
        second = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()["container_id"]
        assert second != first_container and len(containers(f"codehub.workspace={ws['id']}")) == 1
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.running")
        assert types(events)[:2] == ["workspace.created", "workspace.placed"]

        assert (await client.delete(f"/api/workspaces/{ws['id']}")).status_code == 204
        assert containers(f"codehub.workspace={ws['id']}") == []


async def test_missing_image_fails_with_a_reason(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "noimage", image="codehub/no-such-image:never")
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        body = r.json()
        assert body["state"] == "failed"
        assert "codehub/no-such-image:never is not on this Docker host" in body["state_reason"]
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.failed")
        assert events[-1]["data"]["reason"] == body["state_reason"]
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_servers_api_and_placement(hub: Hub) -> None:
    async with hub.client() as client:
        local = next(s for s in (await client.get("/api/admin/servers")).json() if s["is_default"])
        r = await client.post(
            "/api/admin/servers",
            json={"name": "far-away", "docker_url": "tcp://127.0.0.1:1", "max_workspaces": 3, "labels": {"z": "1"}},
        )
        assert r.status_code == 201, r.text
        dead = r.json()
        assert (
            await client.post("/api/admin/servers", json={"name": "far-away", "docker_url": "tcp://x:1"})
        ).status_code == 409
        assert (
            await client.post("/api/admin/servers", json={"name": "bad", "docker_url": "ftp://x:1"})
        ).status_code == 422
        probe = (await client.post(f"/api/admin/servers/{dead['id']}/test")).json()
        assert probe["ok"] is False and probe["error"]
        probe = (await client.post(f"/api/admin/servers/{local['id']}/test")).json()
        assert probe["ok"] is True and probe["docker_version"] and probe["api_version"] and probe["latency_ms"] >= 0

        ws = await create(client, "mover", server_id=local["id"])
        r = await client.post(f"/api/admin/workspaces/{ws['id']}/place", json={"server_id": dead["id"]})
        assert r.status_code == 200 and r.json()["server_id"] == dead["id"]
        assert (await client.delete(f"/api/admin/servers/{dead['id']}")).status_code == 409
        listing = {s["id"]: s for s in (await client.get("/api/admin/servers")).json()}
        assert listing[dead["id"]]["placed"] == 1 and listing[dead["id"]]["running"] == 0
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "failed" and "tcp://127.0.0.1:1" in r.json()["state_reason"]
        r = await client.post(f"/api/admin/workspaces/{ws['id']}/place", json={"server_id": local["id"]})
        assert r.status_code == 503 and r.json()["error"] == "source_unreachable"  # its files cannot come along
        r = await client.post(
            f"/api/admin/workspaces/{ws['id']}/place", json={"server_id": local["id"], "leave_files": True}
        )
        assert r.status_code == 200
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running"
        r = await client.post(f"/api/admin/workspaces/{ws['id']}/place", json={"server_id": dead["id"]})
        assert r.status_code == 409 and r.json()["error"] == "workspace_busy"
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.running")
        assert types(events).count("workspace.placed") == 3
        assert (await client.delete(f"/api/admin/servers/{dead['id']}")).status_code == 204
        await client.delete(f"/api/workspaces/{ws['id']}")
        user = await hub.new_user("not-an-admin")
        async with hub.client(user) as plain:
            assert (await plain.get("/api/admin/servers")).status_code == 403


async def test_engine_events_and_reconciliation_fix_the_state(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "victim")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        subprocess.run(["docker", "kill", f"codehub-{ws['id']}"], check=True, capture_output=True)
        body = await wait_state(client, ws["id"], {"failed", "stopped"}, timeout=15)
        assert body["state"] == "failed" and "137" in body["state_reason"]
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        subprocess.run(["docker", "rm", "-f", f"codehub-{ws['id']}"], check=True, capture_output=True)
        body = await wait_state(client, ws["id"], {"stopped", "failed"}, timeout=15)
        assert body["state"] == "stopped" and "removed outside the hub" in body["state_reason"]
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_orphan_container_is_reported_then_removed(hub: Hub) -> None:
    name = f"codehub-ghost-{hub.settings.hub_id}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            f"codehub.hub={hub.settings.hub_id}",
            "--label",
            "codehub.workspace=ghost000",
            TEST_IMAGE,
        ],
        check=True,
        capture_output=True,
    )
    async with hub.client() as client:
        events = await event_history(client, "admin", "runtime.orphan_removed", timeout=20)
    orphan = [e for e in events if e["type"].startswith("runtime.orphan") and e["data"]["workspace_id"] == "ghost000"]
    assert types(orphan)[-2:] == ["runtime.orphan", "runtime.orphan_removed"]
    assert containers("codehub.workspace=ghost000") == []


async def test_two_hub_processes_never_start_two_containers(hub: Hub) -> None:
    async with serve_asgi(create_app(hub.settings)) as other_url, hub.client() as first:
        ws = await create(first, "contested")
        async with hub.client() as base:
            second = base.__class__(base_url=other_url, headers=dict(base.headers), timeout=30)
        answers = []

        async def start(client) -> None:  # type: ignore[no-untyped-def]
            answers.append((await client.post(f"/api/workspaces/{ws['id']}/start")).status_code)

        async with second, anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(start, first)
                tg.start_soon(start, second)
        assert answers.count(202) == 1 and set(answers) <= {200, 202, 409}, answers
        await wait_state(first, ws["id"], {"running"})
        assert len(containers(f"codehub.workspace={ws['id']}")) == 1
        await first.delete(f"/api/workspaces/{ws['id']}")


async def test_no_room_is_503(tmp_path: Path, own_db: str) -> None:
    settings = docker_settings(tmp_path, own_db, docker_url="none")
    async with running_hub(settings) as hub, hub.client() as client:
        r = await client.post("/api/workspaces", json={"name": "homeless"})
        assert r.status_code == 503 and r.json()["error"] == "no_capacity", r.text
        r = await client.post(
            "/api/admin/servers", json={"name": "tiny", "docker_url": need_docker(), "max_workspaces": 1}
        )
        assert r.status_code == 201
        assert (await client.post("/api/workspaces", json={"name": "first"})).status_code == 201
        r = await client.post("/api/workspaces", json={"name": "second"})
        assert r.status_code == 503 and "no server has room" in r.json()["detail"]


@pytest.fixture
def own_db(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database for a hub of the test's own."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url
