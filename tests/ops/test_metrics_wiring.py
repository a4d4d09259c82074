"""Metrics recorded by the services, read back through GET /metrics: workspace start durations (local and
Docker runtimes), Docker call latencies, and LLM tokens / latency / time to first token (fake LLM)."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.fake_llm import Behavior, serve_fake_llm
from tests.support.lifecycle import create, wait_state
from tests.support.promtext import sample_value
from tests.support.runtime import fake_ide_command, remove_hub_containers
from tests.support.server import running_hub
from tests.support.settings import docker_settings, make_settings

pytestmark = pytest.mark.anyio


async def scrape(url: str) -> str:
    """The /metrics text of the hub at ``url``."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
        r = await anon.get("/metrics")
    assert r.status_code == 200
    return r.text


def value(text: str, metric: str, **labels: str) -> float:
    """A sample's value, 0 when absent."""
    return sample_value(text, metric, **labels) or 0.0


async def test_local_start_is_timed(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(
        tmp_path, database_url=sqlite_url, runtime="local", local_ide_command=fake_ide_command(), start_timeout=20
    )
    async with running_hub(settings) as hub, hub.client() as client:
        count = "codehub_workspace_start_duration_seconds_count"
        before = value(await scrape(hub.url), count, runtime="local", outcome="ok")
        ws = await create(client, "timed")
        assert (await client.post(f"/api/workspaces/{ws['id']}/start")).status_code == 202
        body = await wait_state(client, ws["id"], {"running", "failed"})
        assert body["state"] == "running", body["state_reason"]
        text = await scrape(hub.url)
        assert value(text, count, runtime="local", outcome="ok") == before + 1
        assert value(text, "codehub_workspace_start_duration_seconds_sum", runtime="local", outcome="ok") > 0
        await client.post(f"/api/workspaces/{ws['id']}/stop")


async def test_docker_start_records_start_and_engine_calls(tmp_path: Path, sqlite_url: str) -> None:
    settings = docker_settings(tmp_path, sqlite_url)
    try:
        async with running_hub(settings) as hub, hub.client() as client:
            ws = await create(client, "timed-docker")
            r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
            assert r.status_code == 200 and r.json()["state"] == "running", r.text
            assert (await client.get(f"/api/workspaces/{ws['id']}/status")).status_code == 200
            text = await scrape(hub.url)
            count = "codehub_workspace_start_duration_seconds_count"
            assert value(text, count, runtime="docker", outcome="ok") >= 1
            for operation in ("create", "start", "inspect", "stats"):
                assert value(text, "codehub_docker_call_duration_seconds_count", operation=operation) >= 1, operation
            await client.delete(f"/api/workspaces/{ws['id']}")
    finally:
        remove_hub_containers(settings.hub_id)


async def test_llm_tokens_latency_and_first_token(tmp_path: Path, sqlite_url: str) -> None:
    async with serve_fake_llm() as fake:
        fake.default = Behavior(reply="It adds two numbers.")
        settings = make_settings(
            tmp_path, database_url=sqlite_url, llm_base_url=fake.url, llm_model="fake-coder", llm_rate_per_minute=0
        )
        async with running_hub(settings) as hub:
            token = await hub.new_user(f"llm-{secrets.token_hex(3)}")
            async with hub.client(token) as client:
                ws = (await client.post("/api/workspaces", json={"name": "ai-metrics"})).json()
                path = settings.resolved_workspaces_dir / ws["id"] / "calc.py"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("def add(a, b):\n    return a + b\n")
                before = await scrape(hub.url)
                r = await client.post("/api/ai/explain", json={"workspace_id": ws["id"], "path": "calc.py"})
                assert r.status_code == 200, r.text
                usage = r.json()["usage"]
            after = await scrape(hub.url)

    def grew(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert grew("codehub_llm_tokens_total", kind="completion") == usage["completion_tokens"] > 0
    assert grew("codehub_llm_tokens_total", kind="prompt") == usage["prompt_tokens"] > 0
    assert grew("codehub_llm_request_duration_seconds_count", outcome="ok") == 1
    assert grew("codehub_llm_first_token_seconds_count") == 1
