"""Lifecycle API over the local-process runtime (fake IDE), on SQLite and Postgres."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.lifecycle import create, event_history, types, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings
from tests.support.sse_client import SSEStream

pytestmark = pytest.mark.anyio


@pytest.fixture
def own_db(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database of its own (for tests that run a hub of their own)."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub running workspaces as local processes (the fake IDE)."""
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=db_url,
        runtime="local",
        local_ide_command=fake_ide_command(),
        start_timeout=20,
        reconcile_interval=0.5,
    )
    async with running_hub(settings) as running:
        yield running


async def test_start_run_exec_status_logs_stop_delete(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "life")
        r = await client.post(f"/api/workspaces/{ws['id']}/start")
        assert r.status_code == 202 and r.json()["state"] == "starting"
        body = await wait_state(client, ws["id"], {"running", "failed"})
        assert body["state"] == "running", body["state_reason"]
        again = await client.post(f"/api/workspaces/{ws['id']}/start")
        assert again.status_code == 200 and again.json()["state"] == "running"

        r = await client.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "echo hi; echo e >&2; exit 3"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["exit_code"], out["stdout"], out["stderr"]) == (3, "hi\n", "e\n")
        assert out["exec_id"] and not out["timed_out"]
        r = await client.post(
            f"/api/workspaces/{ws['id']}/execute", json={"command": ["sleep", "30"], "timeout_s": 0.5}
        )
        assert r.json()["timed_out"] and r.json()["exit_code"] == 137

        r = await client.get(f"/api/workspaces/{ws['id']}/status")
        status = r.json()
        assert status["state"] == "running" and status["runtime"] == "local"
        assert status["ide_healthy"] is True and status["pids"] >= 1 and status["memory_used_bytes"] > 0
        assert status["uptime_s"] >= 0 and status["last_activity_source"] in ("start", "exec")
        assert status["idle_stop_at"]

        r = await client.get(f"/api/workspaces/{ws['id']}/logs", params={"tail": 100})
        lines = r.json()["lines"]
        assert any("fake-ide listening" in line["text"] for line in lines) and all(line["at"] for line in lines)

        r = await client.post(f"/api/workspaces/{ws['id']}/stop")
        assert r.status_code == 200 and r.json()["state"] == "stopped"
        assert (await client.post(f"/api/workspaces/{ws['id']}/stop")).json()["state"] == "stopped"
        r = await client.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "true"})
        assert r.status_code == 409 and r.json()["error"] == "workspace_not_running"
        r = await client.get(f"/api/workspaces/{ws['id']}/status")
        assert r.json()["state"] == "stopped" and r.json()["cpu_percent"] is None

        events = await event_history(client, f"workspace:{ws['id']}", "workspace.stopped")
        assert types(events) == [
            "workspace.created",
            "workspace.starting",
            "workspace.progress",
            "workspace.running",
            "workspace.stopping",
            "workspace.stopped",
        ]
        directory = Path(hub.settings.resolved_workspaces_dir) / ws["id"]
        assert directory.is_dir()
        r = await client.delete(f"/api/workspaces/{ws['id']}", params={"purge": "true"})
        assert r.status_code == 204
        assert not directory.exists()
        assert (await client.get(f"/api/workspaces/{ws['id']}")).status_code == 404


async def test_every_start_request_is_audited_once(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "audited")
        waited = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert waited.status_code == 200 and waited.json()["state"] == "running", waited.text
        again = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert again.status_code == 200 and again.json()["state"] == "running"
        assert (await client.post(f"/api/workspaces/{ws['id']}/stop")).json()["state"] == "stopped"
        accepted = await client.post(f"/api/workspaces/{ws['id']}/start")
        assert accepted.status_code == 202 and accepted.json()["state"] == "starting"
        assert (await wait_state(client, ws["id"], {"running", "failed"}))["state"] == "running"
        items = (await client.get("/api/audit", params={"workspace_id": ws["id"], "limit": 50})).json()["items"]
        assert [(r["action"], r["outcome"]) for r in items if r["action"] == "workspace.start"] == [
            ("workspace.start", "ok")
        ] * 3  # audited while the start goes on (before a wait), or after finding it running
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_exec_streams_sse_and_publishes_on_the_exec_topic(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "streamy")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        headers = {"Accept": "text/event-stream"}
        body = {"command": "echo one; sleep 0.3; echo two >&2; exit 5"}
        async with client.stream("POST", f"/api/workspaces/{ws['id']}/execute", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = await SSEStream(response).rest()
        assert [f.event for f in frames] == ["exec.output", "exec.output", "exec.exit"]
        assert [f.data["data"] for f in frames[:2]] == ["one\n", "two\n"]
        assert frames[2].data["exit_code"] == 5
        exec_id = frames[0].data["exec_id"]
        published = await event_history(client, f"workspace:{ws['id']}:exec", "exec.exit")
        mine = [e for e in published if e["data"]["exec_id"] == exec_id]
        assert types(mine) == ["exec.start", "exec.output", "exec.output", "exec.exit"]
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_logs_follow_streams_until_stop(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "follow")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        headers = {"Accept": "text/event-stream"}
        async with client.stream(
            "GET", f"/api/workspaces/{ws['id']}/logs", params={"follow": "true"}, headers=headers, timeout=None
        ) as response:
            assert response.status_code == 200
            stream = SSEStream(response)
            status = await client.get(f"/api/workspaces/{ws['id']}/status")
            assert status.status_code == 200
            frame = await stream.next()
            while frame.event != "log" or frame.data["text"] != "GET /healthz":
                frame = await stream.next()
            await client.post(f"/api/workspaces/{ws['id']}/stop")
            rest = await stream.rest()
        assert rest[-1].event == "end"
        assert any(f.event == "log" and "terminated" in f.data["text"] for f in rest)
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_concurrent_starts_make_one_process(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "racer")
        answers = []

        async def start() -> None:
            answers.append(await client.post(f"/api/workspaces/{ws['id']}/start"))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(start)
        codes = sorted(r.status_code for r in answers)
        assert codes.count(202) == 1, [r.text for r in answers]
        assert set(codes) <= {200, 202, 409}
        await wait_state(client, ws["id"], {"running"})
        run_dir = hub.settings.data_dir.resolve() / "run"
        pid = json.loads((run_dir / f"{ws['id']}.json").read_text())["pid"]
        os.kill(pid, 0)
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_restart_and_a_crash_is_reconciled(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "crashy")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        r = await client.post(f"/api/workspaces/{ws['id']}/restart", params={"wait": "true"})
        assert r.status_code == 200 and r.json()["state"] == "running"
        status = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()
        os.kill(int(status["container_id"]), 9)
        body = await wait_state(client, ws["id"], {"failed", "stopped"}, timeout=15)
        assert body["state"] == "failed" and "137" in body["state_reason"]
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.failed")
        assert types(events)[-1] == "workspace.failed" and events[-1]["data"]["exit_code"] == 137
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running"
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_start_failure_keeps_the_reason(tmp_path: Path, own_db: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url=own_db,
        runtime="local",
        start_timeout=1.5,
        local_ide_command=f"{fake_ide_command()} --host 127.0.0.2",
    )
    async with running_hub(settings) as hub, hub.client() as client:
        ws = await create(client, "never-ready")
        r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        body = r.json()
        assert body["state"] == "failed"
        assert "did not answer HTTP within 1.5s" in body["state_reason"]
        assert "fake-ide listening on 127.0.0.2" in body["state_reason"]
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.failed")
        assert any("fake-ide" in line for line in events[-1]["data"]["logs"])


async def test_idle_workspace_gets_a_warning_then_stops(tmp_path: Path, own_db: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url=own_db,
        runtime="local",
        local_ide_command=fake_ide_command(),
        idle_timeout=2.0,
        idle_warning=1.0,
    )
    async with running_hub(settings) as hub, hub.client() as client:
        ws = await create(client, "sleepy")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        body = await wait_state(client, ws["id"], {"stopped"}, timeout=15)
        assert body["state_reason"] == "idle"
        events = await event_history(client, f"workspace:{ws['id']}", "workspace.stopped")
        kinds = types(events)
        assert kinds.index("workspace.stop_pending") < kinds.index("workspace.stopping")
        pending = events[kinds.index("workspace.stop_pending")]["data"]
        assert pending["reason"] == "idle" and pending["stop_at"]


async def test_users_cannot_drive_others_workspaces(hub: Hub) -> None:
    other = await hub.new_user(f"u{os.getpid()}x{id(hub) % 1000}")
    async with hub.client() as admin, hub.client(other) as user:
        ws = await create(admin, "admins-own")
        for path in ("start", "stop", "restart", "execute", "status", "logs"):
            method = user.get if path in ("status", "logs") else user.post
            kwargs = {"json": {"command": "id"}} if path == "execute" else {}
            r = await method(f"/api/workspaces/{ws['id']}/{path}", **kwargs)
            assert r.status_code == 404, (path, r.text)
        await admin.delete(f"/api/workspaces/{ws['id']}")


async def test_execute_bodies_are_checked(hub: Hub) -> None:
    async with hub.client() as client:
        ws = await create(client, "checked")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        url = f"/api/workspaces/{ws['id']}/execute"
        for body, status in [
            ({"command": []}, 400),
            ({"command": ""}, 400),
            ({"command": "true", "timeout_s": 1e9}, 422),
            ({"command": "true", "env": {"BAD-NAME": "x"}}, 422),
            ({"command": "true", "nope": 1}, 400),
        ]:
            r = await client.post(url, json=body)
            assert r.status_code == status, (body, r.text)
        r = await client.post(url, json={"command": "pwd", "workdir": "sub"})
        assert r.json()["exit_code"] != 0
        await client.post(url, json={"command": "mkdir sub"})
        r = await client.post(url, json={"command": "pwd", "workdir": "sub"})
        assert r.json()["stdout"].strip().endswith(f"{ws['id']}/sub")
        await client.delete(f"/api/workspaces/{ws['id']}")


async def test_anonymous_is_refused(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as anon:
        r = await anon.post("/api/workspaces/abc/start")
        assert r.status_code == 401
