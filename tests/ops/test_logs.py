"""Structured logs of a real `codehub serve` process: one JSON object per line, request id, user id and
workspace id on the access line, and never a token, password or request content."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, port: int, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(tmp_path / "data"),
        CODEHUB_PORT=str(port),
        CODEHUB_LOG_FORMAT="json",
        CODEHUB_LOG_LEVEL="info",
        CODEHUB_RUNTIME="local",
        CODEHUB_DOCKER_URL="none",
        CODEHUB_HUB_ID=f"t-{secrets.token_hex(4)}",
        CODEHUB_ADMIN_USERNAME="boss",
        CODEHUB_ADMIN_PASSWORD=password,
    )
    return env


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"codehub serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("codehub serve did not answer /health")


def _exercise(url: str, password: str, marker: str) -> dict[str, str]:
    """Requests whose secrets and bodies must not reach the logs; returns what to look for."""
    with httpx.Client(base_url=url, timeout=10) as anon:
        assert anon.post("/api/auth/login", json={"username": "boss", "password": marker}).status_code == 401
        r = anon.post("/api/auth/login", json={"username": "boss", "password": password})
        assert r.status_code == 200, r.text
        session = r.json()["token"]
    with httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {session}"}) as client:
        token = client.post("/api/auth/tokens", json={"name": "logs"}).json()["token"]
        ws = client.post("/api/workspaces", json={"name": "logged"}).json()
        assert client.get("/api/workspaces", params={"access_token": token}).status_code == 200
    with httpx.Client(base_url=url, timeout=10) as anon:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        r = anon.get(
            f"/api/workspaces/{ws['id']}?access_token={token}", headers={"X-Request-ID": "ops-logs-1", **headers}
        )
        assert r.status_code == 200  # an old link's token in the URL: no credential, but never logged either
        anon.post("/api/workspaces", content=f'{{"name": "x", "oops": "{marker}', headers=headers)  # broken JSON
        anon.post("/api/workspaces", json={"name": "y", "image": f"bad image {marker}"}, headers=headers)
        anon.patch(f"/api/workspaces/{ws['id']}", json={"name": marker.upper()}, headers=headers)
        anon.put(f"/api/workspaces/{ws['id']}/files/notes.txt", content=marker.encode(), headers=headers)
        anon.get("/metrics", params={"access_token": token})
    return {"session": session, "token": token, "workspace_id": ws["id"]}


def test_logs_are_json_with_ids_and_without_secrets(tmp_path: Path) -> None:
    port = free_port()
    password = f"pw-{secrets.token_hex(8)}"
    marker = f"marker{secrets.token_hex(8)}"
    env = _env(tmp_path, port, password)
    subprocess.run([sys.executable, "-m", "app", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    log = tmp_path / "stderr.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env, cwd=ROOT, stderr=sink, stdout=sink)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc, log)
            seen = _exercise(url, password, marker)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    text = log.read_text()
    for secret in (seen["session"], seen["token"], password, marker, marker.upper()):
        assert secret not in text, "a secret or request content reached the logs"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    access = [entry for entry in lines if entry.get("logger") == "codehub.access"]
    assert access and all(entry["request_id"] and "timestamp" in entry and "level" in entry for entry in access)
    one = next(entry for entry in access if entry["request_id"] == "ops-logs-1")
    assert one["workspace_id"] == seen["workspace_id"] and one["user_id"] == 1
    assert one["route"] == "/api/workspaces/{workspace_id}" and one["status"] == 200
    assert one["path"] == f"/api/workspaces/{seen['workspace_id']}"  # no query string
    assert any(str(entry.get("event", "")).startswith("created the first admin") for entry in lines)


def test_console_format_is_readable(tmp_path: Path) -> None:
    from app.logging_setup import configure_logging
    from app.settings import load_settings

    configure_logging(load_settings(environ={}, log_format="console", log_level="info"))
    import logging

    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("codehub", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    rendered = handler.format(record)
    assert "hello world" in rendered and not rendered.lstrip().startswith("{")
    configure_logging(load_settings(environ={}, log_level="warning"))
