"""GET /ready over real HTTP: every registered engine is checked (latency, API version); a remote engine
that is down is named without failing readiness, while no working engine at all fails it. GET /metrics has
one content type, and relay metrics are labelled by server, never by workspace."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.promtext import sample_value
from tests.support.server import free_port, running_hub
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio


async def ready(url: str) -> httpx.Response:
    """GET /ready without credentials (probes carry none)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
        return await anon.get("/ready")


def engine(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The engine named ``name`` in a /ready body."""
    found = [e for e in body["engines"] if e["name"] == name]
    assert len(found) == 1, body["engines"]
    return found[0]


async def test_a_remote_engine_down_is_named_without_failing_readiness(tmp_path: Path, sqlite_url: str) -> None:
    settings = docker_settings(tmp_path, sqlite_url)
    async with running_hub(settings) as hub, hub.client() as client:
        body = (await ready(hub.url)).json()
        local = next(e for e in body["engines"] if e["kind"] == "docker")
        assert local["ok"] and local["required"] and local["api_version"] and local["latency_ms"] > 0, local
        assert body["ok"] and body["down"] == []

        name = f"gone-{secrets.token_hex(3)}"
        port = free_port()
        url = f"https://someone:pa55word@127.0.0.1:{port}"
        assert (await client.post("/api/admin/servers", json={"name": name, "docker_url": url})).status_code == 201
        r = await ready(hub.url)
        body = r.json()
        assert r.status_code == 200 and body["ok"], body
        assert body["down"] == [name]
        gone = engine(body, name)
        assert not gone["ok"] and not gone["required"] and gone["error"] and gone["server_id"]
        assert engine(body, local["name"])["ok"]
        assert str(port) not in r.text and "pa55word" not in r.text  # anonymous: no internal addresses
        r = await client.get("/ready")  # an admin sees why, never the credentials
        assert str(port) in engine(r.json(), name)["error"] and "pa55word" not in r.text

        text = (await client.get("/metrics")).text  # alerts see the same, per engine
        assert sample_value(text, "codehub_dependency_up", name=f"engine:{name}") == 0
        assert sample_value(text, "codehub_dependency_up", name=f"engine:{local['name']}") == 1
        assert (await client.delete(f"/api/admin/servers/{gone['server_id']}")).status_code == 204
        text = (await client.get("/metrics")).text
        assert sample_value(text, "codehub_dependency_up", name=f"engine:{name}") is None
        assert (await ready(hub.url)).json()["down"] == []


async def test_no_working_engine_fails_readiness(tmp_path: Path, sqlite_url: str) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    settings = docker_settings(tmp_path, sqlite_url, docker_url=dead)  # workspaces need a Docker server
    async with running_hub(settings) as hub, hub.client() as client:
        name = f"dead-{secrets.token_hex(3)}"
        assert (await client.post("/api/admin/servers", json={"name": name, "docker_url": dead})).status_code == 201
        r = await ready(hub.url)
        body = r.json()
        assert r.status_code == 503 and not body["ok"] and body["down"] == [name], body
        assert all(check["ok"] for check in body["checks"])  # the database is fine: the engines are the cause
        assert engine(body, "hub-local")["ok"] and not engine(body, "hub-local")["required"]


async def test_metrics_have_one_content_type(tmp_path: Path, sqlite_url: str) -> None:
    settings = docker_settings(tmp_path, sqlite_url)
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as anon:
        r = await anon.get("/metrics")
    assert r.status_code == 200
    assert r.headers.get_list("content-type") == ["text/plain; version=1.0.0; charset=utf-8"]
