"""Attacks on a local-process workspace's IDE port: without the start's secret the IDE (the fake IDE, which checks
it as code-server does) refuses HTTP and WebSocket alike, while the hub's relay gets through; a restart makes the
old secret worthless; and the secret shows up in no log line, event, API response, database row or file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from app.services.runtime.ide_secret import server_key
from tests.isolation.ide_helpers import credential, direct_get, upgrade_status, workspace_row
from tests.support.lifecycle import event_history, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings
from tests.test_no_content_leaks import Collect, dump_bytes, dump_rows

pytestmark = pytest.mark.anyio


def local_settings(data_dir: Path, database_url: str, **overrides: Any) -> Any:
    """A hub whose workspaces run the fake IDE as local processes."""
    return make_settings(
        data_dir,
        database_url=database_url,
        runtime="local",
        local_ide_command=fake_ide_command(),
        start_timeout=20,
        idle_timeout=0,
        **overrides,
    )


async def start(hub: Hub, token: str, name: str) -> str:
    """Create and start a workspace; its id once running."""
    async with hub.client(token) as client:
        ws = (await client.post("/api/workspaces", json={"name": name})).json()["id"]
        r = await client.post(f"/api/workspaces/{ws}/start", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
    return ws


async def test_local_ide_answers_only_the_relay(sqlite_url: str, tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "data", sqlite_url)
    async with running_hub(settings) as hub:
        token = await hub.new_user("alice")
        ws = await start(hub, token, "attacked")
        row = await workspace_row(settings, ws)
        secret = credential(settings, ws, row.generation)
        endpoint = str(row.endpoint)

        for cookie in (None, "code-server-session=guess", f"codehub_session={token}", f"key={secret}"):
            r = await direct_get(endpoint, "/files?x=1", cookie)
            assert r.status_code == 401 and "files" not in r.text, cookie
        assert (await direct_get(endpoint, "/healthz")).status_code == 200  # readiness needs no secret
        assert await upgrade_status(f"ws://{endpoint}/socket") == 401
        assert await upgrade_status(f"ws://{endpoint}/socket", {"Cookie": "code-server-session=guess"}) == 401
        assert (await direct_get(endpoint, "/files", f"code-server-session={secret}")).status_code == 200

        async with hub.client(token) as client:
            r = await client.get(f"/w/{ws}/files?x=1", headers={"Cookie": "code-server-session=forged; theme=dark"})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["path"] == "/files?x=1" and seen["headers"]["cookie"] == "theme=dark"  # forged one never arrived
        assert secret not in r.text and secret not in str(r.headers)
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(f"{hub.url.replace('http', 'ws')}/w/{ws}/socket", additional_headers=headers) as sock:
            await sock.send("through the relay")
            assert await sock.recv() == "through the relay"

        async with hub.client(token) as client:
            r = await client.post(f"/api/workspaces/{ws}/restart", params={"wait": "true"})
            assert r.json()["state"] == "running", r.text
            restarted = await workspace_row(settings, ws)
            fresh = credential(settings, ws, restarted.generation)
            assert fresh != secret
            new_endpoint = str(restarted.endpoint)
            assert (await direct_get(new_endpoint, "/files", f"code-server-session={secret}")).status_code == 401
            assert await upgrade_status(f"ws://{new_endpoint}/s", {"Cookie": f"code-server-session={secret}"}) == 401
            assert (await direct_get(new_endpoint, "/files", f"code-server-session={fresh}")).status_code == 200
            assert (await client.get(f"/w/{ws}/after-restart")).status_code == 200


async def test_the_secret_leaks_nowhere(db_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    settings = local_settings(tmp_path / "data", db_url, log_level="debug")
    root = logging.getLogger()
    seen: list[str] = []
    async with running_hub(settings) as hub:
        collect = Collect(root.handlers[0].formatter)
        root.addHandler(collect)
        try:
            token = await hub.new_user("leaker")
            ws = await start(hub, token, "leak")
            secrets = [credential(settings, ws, (await workspace_row(settings, ws)).generation)]
            pid = int(str((await workspace_row(settings, ws)).container_id))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            async with hub.client(token) as client:
                assert (await client.get(f"/w/{ws}/page")).status_code == 200
                seen.append((await client.get(f"/api/workspaces/{ws}")).text)
                seen.append((await client.get("/api/workspaces")).text)
                seen.append((await client.get(f"/api/workspaces/{ws}/logs")).text)
                seen.append((await client.get(f"/api/workspaces/{ws}/status")).text)
                r = await client.post(f"/api/workspaces/{ws}/restart", params={"wait": "true"})
                seen.append(r.text)
                secrets.append(credential(settings, ws, (await workspace_row(settings, ws)).generation))
                assert (await client.get(f"/w/{ws}/page")).status_code == 200
                seen.append((await client.post(f"/api/workspaces/{ws}/stop")).text)
                await wait_state(client, ws, {"stopped"})
                events = await event_history(client, f"workspace:{ws}", until="workspace.stopped")
            async with hub.client() as admin:
                seen.append((await admin.get("/api/audit", params={"limit": 200})).text)
                with anyio.fail_after(10):
                    seen.append(str(await event_history(admin, "admin", until="workspace.stopped")))
        finally:
            root.removeHandler(collect)
    key = server_key(settings).decode()
    assert secrets[0] != secrets[1]
    assert secrets[0].encode() in environ and secrets[0].encode() not in cmdline  # env only: `ps` shows argv
    assert len(events) > 3 and any(f"/w/{ws}/" in line or ws in line for line in collect.lines)
    texts = {
        "api": "\n".join(seen),
        "events": str(events),
        "logs": "\n".join(collect.lines),
        "stdio": "".join(capfd.readouterr()),
        "rows": await dump_rows(db_url, tmp_path),
        "database": dump_bytes(db_url).decode("latin-1"),
        "files": "\n".join(
            p.read_bytes().decode("latin-1")
            for p in (tmp_path / "data").rglob("*")
            if p.is_file() and p.name != "secret_key" and not p.name.startswith("codehub.db")
        ),
    }
    for where, text in texts.items():
        for value in (*secrets, key):
            assert value not in text, f"the IDE secret or the server key is in the {where}"
