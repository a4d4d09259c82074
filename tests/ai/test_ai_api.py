"""``/api/ai`` over real HTTP against the fake LLM: JSON and SSE, resume, ownership, errors, disconnects, audit."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from app import db
from app.models import AuditEvent
from tests.support.databases import fresh_database
from tests.support.event_hubs import delete_prefix
from tests.support.fake_llm import Behavior, FakeLLM, serve_fake_llm
from tests.support.server import Hub, running_hub
from tests.support.services import need_redis
from tests.support.settings import make_settings
from tests.support.sse_client import SSEStream, open_sse

pytestmark = pytest.mark.anyio
SSE = {"Accept": "text/event-stream"}


class AIHub:
    def __init__(self, hub: Hub, fake: FakeLLM) -> None:
        self.hub, self.fake = hub, fake
        self.tokens: dict[str, str] = {}

    async def user(self, name: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = await self.hub.new_user(f"{name}-{secrets.token_hex(3)}")
        return self.tokens[name]

    async def workspace(self, token: str, files: dict[str, str | bytes]) -> str:
        async with self.hub.client(token) as client:
            r = await client.post("/api/workspaces", json={"name": f"ai-{secrets.token_hex(4)}"})
            assert r.status_code == 201, r.text
        ws_id = r.json()["id"]
        root = self.hub.settings.resolved_workspaces_dir / ws_id
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return ws_id

    def root(self, ws_id: str) -> Path:
        return self.hub.settings.resolved_workspaces_dir / ws_id


@pytest.fixture(scope="module", params=["memory", "redis"])
def backend_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with fresh_database("sqlite", tmp_path_factory.mktemp("db")) as url:
        yield request.param, url


@pytest.fixture(scope="module")
async def ai_hub(backend_db: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AIHub]:
    backend, db_url = backend_db
    redis_url = need_redis() if backend == "redis" else ""
    prefix = f"codehub-test-{secrets.token_hex(6)}"
    async with serve_fake_llm() as fake:
        settings = make_settings(
            tmp_path_factory.mktemp("data"),
            database_url=db_url,
            redis_url=redis_url,
            redis_prefix=prefix,
            llm_base_url=fake.url,
            llm_model="fake-coder",
            llm_rate_per_minute=0,
            llm_max_concurrency=8,
            sse_heartbeat=0.5,
        )
        async with running_hub(settings) as hub:
            yield AIHub(hub, fake)
    if redis_url:
        await delete_prefix(redis_url, prefix)


@pytest.fixture
def ai(ai_hub: AIHub) -> AIHub:
    ai_hub.fake.default = Behavior()
    ai_hub.fake.queue.clear()
    ai_hub.fake.api_key = None
    return ai_hub


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_explain_json(ai: AIHub) -> None:
    token = await ai.user("alice")
    ws = await ai.workspace(token, {"src/calc.py": "def add(a, b):\n    return a + b\n"})
    ai.fake.default = Behavior(reply="It **adds** two numbers.")
    async with ai.hub.client(token) as client:
        r = await client.post(
            "/api/ai/explain",
            json={
                "workspace_id": ws,
                "path": "src/calc.py",
                "start_line": 1,
                "end_line": 2,
                "question": "what does it do?",
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["explanation"] == "It **adds** two numbers." and body["model"] == "fake-coder"
    assert body["usage"]["completion_tokens"] == 4 and not body["usage"]["estimated"]
    assert r.headers["x-ai-request-id"] == body["request_id"]
    assert "Question: what does it do?" in ai.fake.chat_requests[-1].text


async def test_explain_sse_then_follow_and_resume_as_owner(ai: AIHub) -> None:
    token, other = await ai.user("sse-owner"), await ai.user("sse-other")
    ws = await ai.workspace(token, {"m.py": "x = 1\n"})
    ai.fake.default = Behavior(reply="one two three four", token_delay=0.02)
    async with ai.hub.client(token) as client:
        async with client.stream(
            "POST", "/api/ai/explain", json={"workspace_id": ws, "path": "m.py"}, headers=SSE
        ) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            frames = await SSEStream(response).rest()
        request_id = response.headers["x-ai-request-id"]
        assert frames[0].event == "ai.started" and frames[0].id is None
        assert frames[0].data["data"]["request_id"] == request_id
        tokens = [f for f in frames if f.event == "ai.token"]
        assert "".join(f.data["data"]["text"] for f in tokens) == "one two three four"
        assert frames[-1].event == "ai.done" and frames[-1].data["data"]["usage"]["completion_tokens"] == 4
        assert all(f.data["topic"] == f"ai:{request_id}" and f.data["id"] == f.id for f in frames[1:])
        ids = [int(f.id) for f in frames[1:]]
        assert ids == sorted(ids)
        # the owner can replay the whole request, or resume after any event
        for url in (f"/api/ai/requests/{request_id}/events", f"/api/events?topic=ai:{request_id}&since=earliest"):
            async with open_sse(client, url) as stream:
                replay = await stream.events(len(frames) - 1)
            assert [(f.id, f.event) for f in replay] == [(f.id, f.event) for f in frames[1:]]
        async with open_sse(client, f"/api/events?topic=ai:{request_id}", last_event_id=frames[2].id) as stream:
            rest = await stream.events(len(frames) - 3)
        assert [f.id for f in rest] == [f.id for f in frames[3:]]
    async with ai.hub.client(other) as client:
        assert (await client.get(f"/api/ai/requests/{request_id}/events")).status_code == 404
        assert (await client.get(f"/api/events?topic=ai:{request_id}")).status_code == 404
    async with ai.hub.client() as admin, open_sse(admin, f"/api/ai/requests/{request_id}/events") as stream:
        assert (await stream.events(1))[0].event == "ai.token"


async def test_rewrite_json_carries_a_validated_diff(ai: AIHub) -> None:
    token = await ai.user("rewriter")
    ws = await ai.workspace(token, {"app/util.py": "def double(x):\n    return x * 2\n\n\nVALUE = 1\n"})
    ai.fake.default = Behavior(reply="```python\ndef double(x: int) -> int:\n    return x * 2\n```")
    async with ai.hub.client(token) as client:
        r = await client.post(
            "/api/ai/rewrite",
            json={
                "workspace_id": ws,
                "path": "app/util.py",
                "instruction": "add type hints",
                "start_line": 1,
                "end_line": 2,
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["path"] == "app/util.py" and body["validation"]["ok"] is True
    assert body["diff"].startswith("diff --git a/app/util.py b/app/util.py\n")
    assert "+def double(x: int) -> int:\n" in body["diff"] and "-def double(x):\n" in body["diff"]
    assert (ai.root(ws) / "app/util.py").read_text().startswith("def double(x):")  # nothing written


async def test_upstream_errors_map_to_http_statuses(ai: AIHub) -> None:
    token = await ai.user("errs")
    ws = await ai.workspace(token, {"m.py": "x = 1\n"})
    payload = {"workspace_id": ws, "path": "m.py"}
    async with ai.hub.client(token) as client:
        ai.fake.script(Behavior(status=429, retry_after="9", error_message="busy"))
        r = await client.post("/api/ai/explain", json=payload)
        assert r.status_code == 429 and r.headers["retry-after"] == "9" and r.json()["error"] == "llm_rate_limited"
        ai.fake.script(Behavior(status=500, error_message="model crashed"))
        r = await client.post("/api/ai/explain", json=payload, headers=SSE)
        assert r.status_code == 502 and "model crashed" in r.json()["detail"]
        ai.fake.script(Behavior(reply="a b c", error_after=1, error_message="died mid-way"))
        r = await client.post("/api/ai/explain", json=payload)
        assert r.status_code == 502 and "died mid-way" in r.json()["detail"]
        ai.fake.script(Behavior(reply="a b c", drop_after=1))
        async with client.stream("POST", "/api/ai/explain", json=payload, headers=SSE) as response:
            frames = await SSEStream(response).rest()
        assert frames[-1].event == "ai.error" and frames[-1].data["data"]["error"] == "llm_stream_broken"


async def test_request_validation(ai: AIHub) -> None:
    token, other = await ai.user("val"), await ai.user("val-other")
    ws = await ai.workspace(token, {"m.py": "x = 1\n", "bin.dat": b"\x00\x01"})
    async with ai.hub.client(token) as client:
        cases = [
            ({"workspace_id": ws, "path": "m.py", "instruction": ""}, "/api/ai/rewrite", 400),
            ({"workspace_id": ws, "path": "m.py"}, "/api/ai/rewrite", 400),
            ({"workspace_id": ws, "path": "m.py", "start_line": 5}, "/api/ai/explain", 422),
            ({"workspace_id": ws, "path": "nope.py"}, "/api/ai/explain", 404),
            ({"workspace_id": ws, "path": "../etc/passwd"}, "/api/ai/explain", 400),
            ({"workspace_id": ws, "path": "bin.dat"}, "/api/ai/explain", 415),
            ({"workspace_id": ws, "path": "m.py", "extra": 1}, "/api/ai/explain", 400),
        ]
        for payload, url, status in cases:
            r = await client.post(url, json=payload)
            assert r.status_code == status, (payload, r.text)
    async with ai.hub.client(other) as client:
        r = await client.post("/api/ai/explain", json={"workspace_id": ws, "path": "m.py"})
        assert r.status_code == 404
    assert not any("nope" in r.text for r in ai.fake.chat_requests)


async def test_client_going_away_cancels_upstream(ai: AIHub) -> None:
    token = await ai.user("leaver")
    ws = await ai.workspace(token, {"m.py": "x = 1\n"})
    ai.fake.default = Behavior(reply=" ".join(["tok"] * 200), token_delay=0.05)
    before = ai.fake.disconnects
    async with ai.hub.client(token) as client:
        async with client.stream(
            "POST", "/api/ai/explain", json={"workspace_id": ws, "path": "m.py"}, headers=SSE
        ) as response:
            stream = SSEStream(response)
            assert (await stream.events(2))[1].event == "ai.token"
        await wait_for(lambda: ai.fake.disconnects == before + 1)
        with anyio.move_on_after(0.5):  # JSON mode: the handler notices the disconnect too
            await client.post("/api/ai/explain", json={"workspace_id": ws, "path": "m.py"})
        await wait_for(lambda: ai.fake.disconnects == before + 2)


async def test_audit_records_hashes_and_counts_only(ai: AIHub) -> None:
    token = await ai.user("audited")
    secret = "correct-horse-battery-staple"
    ws = await ai.workspace(token, {"m.py": f'password = "{secret}"\n'})
    ai.fake.default = Behavior(reply="It stores a password.")
    async with ai.hub.client(token) as client:
        r = await client.post("/api/ai/explain", json={"workspace_id": ws, "path": "m.py"})
        assert r.status_code == 200
    assert secret not in ai.fake.chat_requests[-1].text
    engine = db.create_engine(ai.hub.settings)
    rows: list[dict[str, Any]] = []
    try:
        with anyio.fail_after(5):  # the row is written as the job ends, just after ai.done went out
            while not any(row["action"] == "ai.explain" for row in rows):
                await anyio.sleep(0.02)
                async with engine.connect() as conn:
                    found = await conn.execute(select(AuditEvent).where(AuditEvent.workspace_id == ws))
                    rows = [dict(row._mapping) for row in found]
    finally:
        await engine.dispose()
    [row] = [row for row in rows if row["action"] == "ai.explain"]
    assert row["outcome"] == "ok" and row["details"]["model"] == "fake-coder" and row["target"] == "m.py"
    assert row["details"]["completion_tokens"] == 4 and len(row["details"]["prompt_sha256"]) == 64
    assert "password" not in str(row) and secret not in str(row)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("sqlite", tmp_path) as url:
        yield url


async def test_not_configured_is_503(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", database_url=sqlite_url)
    async with running_hub(settings) as hub, hub.client() as client:
        r = await client.post("/api/ai/explain", json={"workspace_id": "abc", "path": "m.py"})
    assert r.status_code == 503
    assert r.json()["error"] == "llm_not_configured" and "CODEHUB_LLM_BASE_URL" in r.json()["detail"]


async def test_sse_heartbeats_while_the_model_is_slow(ai: AIHub) -> None:
    token = await ai.user("slowpoke")
    ws = await ai.workspace(token, {"m.py": "x = 1\n"})
    ai.fake.default = Behavior(reply="late", tokens=["late"], token_delay=1.2)
    async with (
        ai.hub.client(token) as client,
        client.stream("POST", "/api/ai/explain", json={"workspace_id": ws, "path": "m.py"}, headers=SSE) as response,
    ):
        stream = SSEStream(response)
        seen: list[Any] = []
        while not seen or seen[-1].event != "ai.done":
            seen.append(await stream.next(5))
    assert any("ping" in frame.comments for frame in seen)


async def patch_call(client: Any, ai: AIHub, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /api/patch/<action> over HTTP."""
    r = await client.post(f"/api/patch/{action}", json=body)
    return r.status_code, r.json()


async def test_e2e_rewrite_validate_apply(ai: AIHub) -> None:
    token = await ai.user("e2e")
    original = "import math\n\n\ndef area(r):\n    return 3.14 * r * r\n\n\nprint(area(2))\n"
    ws = await ai.workspace(token, {"geo/shapes.py": original})
    ai.fake.default = Behavior(
        reply="Here is the improved function:\n\n```python\ndef area(r: float) -> float:\n"
        '    """Area of a circle of radius r."""\n    return math.pi * r * r\n```\n'
    )
    async with ai.hub.client(token) as client:
        r = await client.post(
            "/api/ai/rewrite",
            json={
                "workspace_id": ws,
                "path": "geo/shapes.py",
                "start_line": 4,
                "end_line": 5,
                "instruction": "use math.pi and add type hints and a docstring",
            },
        )
        assert r.status_code == 200, r.text
        rewrite = r.json()
        assert rewrite["validation"]["ok"] is True
        status, body = await patch_call(client, ai, "validate", {"workspace_id": ws, "diff": rewrite["diff"]})
        assert status == 200 and body["ok"] is True, body
        apply_body = {
            "workspace_id": ws,
            "diff": rewrite["diff"],
            "base_hashes": {rewrite["path"]: rewrite["base_sha256"]},
        }
        status, body = await patch_call(client, ai, "apply", apply_body)
        assert status == 200, body
        assert (ai.root(ws) / "geo/shapes.py").read_text() == (
            "import math\n\n\ndef area(r: float) -> float:\n"
            '    """Area of a circle of radius r."""\n    return math.pi * r * r\n\n\nprint(area(2))\n'
        )
        status, body = await patch_call(client, ai, "apply", apply_body)  # the base hash no longer matches
        assert status in (409, 412), body


async def test_per_user_concurrency_limit_over_http(ai: AIHub) -> None:
    token, other = await ai.user("busy"), await ai.user("busy-other")
    ws = await ai.workspace(token, {"m.py": "x = 1\n"})
    ws_other = await ai.workspace(other, {"m.py": "x = 1\n"})
    ai.fake.default = Behavior(reply="a b c d e f g h", token_delay=0.1)
    limit = ai.hub.settings.llm_max_concurrency
    async with ai.hub.client(token) as client, anyio.create_task_group() as tg:
        started = anyio.Event()
        opened = 0

        async def hold() -> None:
            nonlocal opened
            async with client.stream(
                "POST", "/api/ai/explain", json={"workspace_id": ws, "path": "m.py"}, headers=SSE
            ) as response:
                assert response.status_code == 200
                opened += 1
                if opened == limit:
                    started.set()
                await SSEStream(response).rest()

        for _ in range(limit):
            tg.start_soon(hold)
        with anyio.fail_after(10):
            await started.wait()
        r = await client.post("/api/ai/explain", json={"workspace_id": ws, "path": "m.py"})
        assert r.status_code == 429 and r.json()["error"] == "ai_concurrency_limit" and r.headers["retry-after"]
        async with ai.hub.client(other) as other_client:  # limits are per user
            r = await other_client.post("/api/ai/explain", json={"workspace_id": ws_other, "path": "m.py"})
            assert r.status_code == 200, r.text
