"""A hub killed with SIGKILL in the middle of a start, then restarted: a true state and no orphans, on the Docker
engine and on the Kubernetes test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from app.factory import create_app
from tests.support.databases import fresh_database
from tests.support.lifecycle import create, event_history, wait_state
from tests.support.runtime import Engine, remove_hub_containers
from tests.support.server import admin_token, free_port, serve_asgi

pytestmark = pytest.mark.anyio
SLOW_IDE = "sh -c 'echo slow boot; sleep 3; exec /usr/local/bin/wsecho 8080'"
STUCK_IDE = "sh -c 'echo stuck; exec sleep 600'"


@pytest.fixture
def own_db(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database shared by the killed hub and its successor."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


def hub_env(settings, port: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """``CODEHUB_*`` variables reproducing ``settings`` for a ``codehub serve`` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    for name in (
        "data_dir",
        "database_url",
        "runtime",
        "docker_url",
        "default_image",
        "workspace_mount",
        "workspace_command",
        "hub_id",
        "start_timeout",
        "default_memory_mb",
        "default_cpu",
        "redis_prefix",
        "kubeconfig",
        "kube_namespace",
        "kube_storage_class",
        "kube_storage_size",
        "kube_cpu_request_ratio",
    ):
        env[f"CODEHUB_{name.upper()}"] = str(getattr(settings, name))
    env.update({"CODEHUB_PORT": str(port), "CODEHUB_HOST": "127.0.0.1", "CODEHUB_LOG_LEVEL": "warning"})
    return env


@pytest.mark.slow
@pytest.mark.parametrize("command", [SLOW_IDE, STUCK_IDE], ids=["ide-comes-up", "ide-never-answers"])
async def test_sigkill_during_start_then_restart(tmp_path: Path, own_db: str, command: str, engine: Engine) -> None:
    first = engine.settings(tmp_path, own_db, workspace_command=command, start_timeout=30)
    token = await admin_token(first)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        env=hub_env(first, port),
        cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            with anyio.fail_after(30):
                while True:
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)
            ws = await create(client, "doomed")
            assert (await client.post(f"/api/workspaces/{ws['id']}/start")).status_code == 202
            with anyio.fail_after(20):
                # killed once the container runs: a created-but-never-started one is a failed start by design
                while not any(running for _, running in await engine.running(f"codehub.workspace={ws['id']}")):
                    await anyio.sleep(0.05)
            assert (await client.get(f"/api/workspaces/{ws['id']}")).json()["state"] == "starting"
        process.send_signal(signal.SIGKILL)
        process.wait(10)

        second = engine.settings(tmp_path, own_db, workspace_command=SLOW_IDE, start_timeout=5, hub_id=first.hub_id)
        async with (
            serve_asgi(create_app(second)) as url,
            httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client,
        ):
            body = await wait_state(client, ws["id"], {"running", "failed"}, timeout=40)
            left = await engine.running(f"codehub.hub={first.hub_id}")
            if command == SLOW_IDE:
                assert body["state"] == "running", body["state_reason"]
                assert left == [(f"codehub-{ws['id']}", True)], left
                status = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()
                assert status["ide_healthy"] is True
                events = await event_history(client, f"workspace:{ws['id']}", "workspace.running")
                assert events[-1]["data"].get("adopted") is True
            else:
                assert body["state"] == "failed"
                assert left == [], left
                assert "hub stopped during the start" in body["state_reason"]
            assert await engine.homes(first.hub_id) in ([], [f"codehub-home-{ws['id']}"])
            r = await client.post(f"/api/workspaces/{ws['id']}/restart", params={"wait": "true"})
            assert r.json()["state"] == "running", r.text
            assert len(await engine.running(f"codehub.hub={first.hub_id}")) == 1
    finally:
        if process.poll() is None:
            process.kill()
        remove_hub_containers(first.hub_id)
