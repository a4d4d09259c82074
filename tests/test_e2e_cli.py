"""End to end: the real `codehub` console script migrates, creates a user and serves; HTTP does the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.server import free_port

CODEHUB = [sys.executable, "-m", "app"]


def _env(data_dir: Path, db_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(data_dir),
        CODEHUB_DATABASE_URL=db_url,
        CODEHUB_PORT=str(port),
        CODEHUB_DOCKER_URL="none",
        CODEHUB_RUNTIME="local",
        CODEHUB_LOG_LEVEL="warning",
    )
    return env


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_cli_serve_login_token_workspaces(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path, migrate=False) as url:
        port = free_port()
        env = _env(tmp_path / "data", url, port)
        refused = subprocess.run([*CODEHUB, "serve"], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "codehub migrate" in refused.stderr
        subprocess.run([*CODEHUB, "migrate"], env=env, check=True, capture_output=True, timeout=120)
        out = subprocess.run(
            [*CODEHUB, "create-user", "root", "--admin", "--password", "root-password-1"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        admin_token = out.strip().splitlines()[-1]
        assert admin_token.startswith("chub_")
        server = subprocess.Popen([*CODEHUB, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=10) as client:
                r = client.post("/api/auth/login", json={"username": "root", "password": "root-password-1"})
                assert r.status_code == 200
                session = r.json()["token"]
                r = client.post(
                    "/api/auth/tokens", json={"name": "e2e"}, headers={"Authorization": f"Bearer {session}"}
                )
                token = r.json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                ws = client.post("/api/workspaces", json={"name": "e2e"}, headers=auth).json()
                assert client.get(f"/api/workspaces/{ws['id']}", headers=auth).json()["state"] == "created"
                assert client.patch(f"/api/workspaces/{ws['id']}", json={"cpu": 0.5}, headers=auth).json()["cpu"] == 0.5
                assert client.delete(f"/api/workspaces/{ws['id']}", headers=auth).status_code == 204
                assert (
                    client.get("/api/workspaces", headers={"Authorization": f"Bearer {admin_token}"}).json()["items"]
                    == []
                )
            second = subprocess.run(
                [*CODEHUB, "token", "root"], env=env, check=True, capture_output=True, text=True, timeout=60
            ).stdout.strip()
            assert httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {second}"}).status_code == 200
        finally:
            server.terminate()
            logs = server.communicate(timeout=20)[0].decode()
        assert token not in logs and session not in logs


def test_cli_help_lists_settings() -> None:
    out = subprocess.run([*CODEHUB, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for var in (
        "CODEHUB_DATA_DIR",
        "CODEHUB_DATABASE_URL",
        "CODEHUB_REDIS_URL",
        "CODEHUB_DOCKER_URL",
        "CODEHUB_LLM_BASE_URL",
        "CODEHUB_IDLE_TIMEOUT",
        "CODEHUB_ALLOWED_ORIGINS",
    ):
        assert var in out
    for command in ("migrate", "create-user", "token"):
        assert subprocess.run([*CODEHUB, command, "--help"], capture_output=True).returncode == 0


def test_cli_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    env = _env(tmp_path, "sqlite+aiosqlite:///" + str(tmp_path / "x.db"), 1234)
    env["CODEHUB_PORT"] = "not-a-port"
    r = subprocess.run([*CODEHUB, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CODEHUB_PORT" in r.stderr and "Traceback" not in r.stderr
