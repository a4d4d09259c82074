"""AI service: explain/rewrite against the fake LLM, events on ai:<id>, secrets kept home, audit without text."""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from app.errors import BadGateway, DomainError, NotFound, TooManyRequests, Unprocessable
from app.services.ai.llm import LLMClient
from app.services.ai.service import AIEvent, AIJob, AIRequest, AIService, Kind
from app.services.audit.log import AuditEntry
from app.settings import load_settings
from tests.support.fake_llm import Behavior, FakeLLM
from tests.support.source_trees import SECRETS, secret_workspace

pytestmark = pytest.mark.anyio


class RecordingPublisher:
    """Keeps every published event; ``delay`` makes publishing slow (to see tokens coalesce)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []
        self.delay = delay
        self._ids = itertools.count(1)

    async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
        if self.delay:
            await anyio.sleep(self.delay)
        event_id = str(next(self._ids))
        self.events.append((event_id, topic, type, data))
        return event_id

    def types(self, topic: str) -> list[str]:
        return [t for _, top, t, _ in self.events if top == topic]


class Harness:
    def __init__(
        self,
        fake: FakeLLM,
        root: Path,
        publisher: RecordingPublisher,
        service: AIService,
        audits: list[AuditEntry],
        tasks: TaskGroup,
    ) -> None:
        self.fake, self.root, self.publisher, self.service, self.audits = fake, root, publisher, service, audits
        self.tasks = tasks
        self._n = itertools.count(1)

    def request(self, path: str, **kwargs: Any) -> AIRequest:
        return AIRequest(
            request_id=f"req{next(self._n)}",
            user_id=7,
            workspace_id="ws1",
            root=self.root,
            path=path,
            actor_name="alice",
            **kwargs,
        )

    async def start(self, kind: Kind, path: str, **kwargs: Any) -> AIJob:
        return await self.service.start(kind, self.request(path, **kwargs), self.tasks)

    async def run(self, kind: Kind, path: str, **kwargs: Any) -> list[AIEvent]:
        async with await self.start(kind, path, **kwargs) as job:
            return [event async for event in job.events if True]


@asynccontextmanager
async def harness(fake: FakeLLM, root: Path, *, delay: float = 0.0, **settings: Any) -> AsyncIterator[Harness]:
    values: dict[str, Any] = {"llm_base_url": fake.url, "llm_model": "fake-coder", "llm_rate_per_minute": 0}
    values.update(settings)
    config = load_settings(environ={}, **values)
    llm = LLMClient(config)
    publisher = RecordingPublisher(delay)
    audits: list[AuditEntry] = []

    async def audit(entry: AuditEntry) -> None:
        audits.append(entry)

    try:
        async with anyio.create_task_group() as tasks:
            yield Harness(fake, root, publisher, AIService(llm, publisher, config, audit=audit), audits, tasks)
    finally:
        await llm.aclose()


async def test_explain_streams_tokens_publishes_them_and_audits(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def add(a, b):\n    return a + b\n")
    fake_llm.default = Behavior(reply="It adds two numbers.", token_delay=0.01)
    async with harness(fake_llm, tmp_path) as h:
        job = await h.start("explain", "m.py", start_line=1, end_line=2, text="What is it?")
        assert job.info["model"] == "fake-coder" and job.info["path"] == "m.py"
        async with job:
            events = [event async for event in job.events]
    assert [e.type for e in events] == ["ai.token", "ai.token", "ai.token", "ai.token", "ai.done"]
    assert "".join(e.data["text"] for e in events if e.type == "ai.token") == "It adds two numbers."
    assert [e.data["index"] for e in events if e.type == "ai.token"] == [0, 1, 2, 3]
    assert h.publisher.types("ai:req1") == ["ai.token"] * 4 + ["ai.done"]
    assert [e.id for e in events] == [event_id for event_id, *_ in h.publisher.events]
    done = events[-1].data
    assert done["usage"]["completion_tokens"] == 4 and done["model"] == "fake-coder"
    prompt = fake_llm.chat_requests[0].json["messages"]
    assert prompt[0]["role"] == "system" and "Question: What is it?" in prompt[1]["content"]
    assert "```python\ndef add(a, b):\n    return a + b\n```" in prompt[1]["content"]
    [entry] = h.audits
    assert entry.action == "ai.explain" and entry.outcome == "ok" and entry.request_id == "req1"
    assert entry.details["model"] == "fake-coder" and entry.details["completion_tokens"] == 4
    assert len(entry.details["prompt_sha256"]) == 64 and entry.sha256 == entry.details["response_sha256"]
    assert "adds" not in repr(entry) and "def add" not in repr(entry)  # hashes and counts, never text


async def test_result_collects_text_and_done(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    async with harness(fake_llm, tmp_path) as h, await h.start("explain", "m.py") as job:
        text, done = await job.result()
    assert text == "Hello from the fake model." and done.finish_reason == "stop"


async def test_secrets_never_reach_the_model(fake_llm: FakeLLM, tmp_path: Path) -> None:
    root = secret_workspace(tmp_path)
    async with harness(fake_llm, root) as h:
        await h.run("explain", "svc/client.py", start_line=4, end_line=9, text=f"why is {SECRETS['password']} here?")
        await h.run("rewrite", "svc/client.py", text="add type hints")
        await h.run("explain", "svc/.env")
    assert len(fake_llm.chat_requests) == 3
    for sent in fake_llm.chat_requests:
        raw = repr(sent.json)
        for name, value in SECRETS.items():
            assert value not in raw, name
        assert "MASKED_SECRET_" in raw


async def test_rewrite_returns_a_diff_that_applies_and_keeps_masked_secrets(fake_llm: FakeLLM, tmp_path: Path) -> None:
    original = (
        'import os\r\n\r\nAPI_KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"\r\n\r\n'
        "def greet(name):\r\n    return 'hi ' + name\r\n"
    )
    (tmp_path / "g.py").write_bytes(original.encode())

    def reply(request: dict[str, Any]) -> str:
        prompt = request["messages"][1]["content"]
        token = re.search(r"MASKED_SECRET_\d+", prompt).group(0)  # type: ignore[union-attr]
        return (
            "Sure, here you go:\n\n```python\n"
            f'API_KEY = "{token}"\n\ndef greet(name: str) -> str:\n    return f"hi {{name}}"\n```\nDone.'
        )

    fake_llm.default = Behavior(reply=reply)
    async with harness(fake_llm, tmp_path) as h:
        events = await h.run("rewrite", "g.py", start_line=3, end_line=6, text="modernize")
    done = events[-1]
    assert done.type == "ai.done" and h.publisher.events[-1][2] == "ai.done"
    diff = done.data["diff"]
    assert "MASKED_SECRET" not in diff and done.data["path"] == "g.py"
    assert done.data["base_sha256"] == hashlib.sha256(original.encode()).hexdigest()
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "g.py").write_bytes(original.encode())
    (tmp_path / "d.diff").write_text(diff)
    subprocess.run(["git", "apply", str(tmp_path / "d.diff")], cwd=repo, check=True)
    assert (repo / "g.py").read_bytes() == (
        b'import os\r\n\r\nAPI_KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"\r\n\r\n'
        b'def greet(name: str) -> str:\r\n    return f"hi {name}"\r\n'
    )
    [entry] = h.audits
    assert entry.action == "ai.rewrite" and entry.outcome == "ok" and len(entry.details["diff_sha256"]) == 64


async def test_error_mid_stream_ends_with_ai_error(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    fake_llm.default = Behavior(reply="a b c d", error_after=2, error_message="engine died")
    async with harness(fake_llm, tmp_path) as h:
        events = await h.run("explain", "m.py")
        with pytest.raises(BadGateway, match="engine died"):
            async with await h.start("explain", "m.py") as job:
                await job.result()
    assert events[-1].type == "ai.error"
    assert "".join(e.data["text"] for e in events if e.type == "ai.token") == "a b"
    assert events[-1].data == {
        "error": "llm_error",
        "detail": "the LLM server failed mid-stream: engine died",
        "status": 502,
    }
    types = h.publisher.types("ai:req1")
    assert types[-1] == "ai.error" and set(types[:-1]) == {"ai.token"}
    assert [a.outcome for a in h.audits] == ["error:llm_error", "error:llm_error"]


async def test_dropped_upstream_ends_with_ai_error(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    fake_llm.default = Behavior(reply="a b c d", drop_after=3)
    async with harness(fake_llm, tmp_path) as h:
        events = await h.run("explain", "m.py")
    assert events[-1].type == "ai.error" and events[-1].data["error"] == "llm_stream_broken"
    assert len(fake_llm.chat_requests) == 1


async def test_failures_before_streaming_raise_from_start(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    fake_llm.script(Behavior(status=429, retry_after="3"))
    async with harness(fake_llm, tmp_path) as h:
        with pytest.raises(TooManyRequests) as caught:
            await h.start("explain", "m.py")
        with pytest.raises(NotFound):
            await h.start("explain", "nope.py")
        with pytest.raises(Unprocessable):
            await h.start("rewrite", "m.py", text=" ")
    assert caught.value.headers["Retry-After"] == "3"
    assert h.publisher.events == []
    assert [a.outcome for a in h.audits] == ["error:llm_rate_limited"]


async def test_cancelling_the_job_cancels_upstream_and_publishes_cancelled(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    fake_llm.default = Behavior(reply="one two three four five six", token_delay=0.05)
    async with harness(fake_llm, tmp_path) as h:
        async with await h.start("explain", "m.py") as job:
            async for event in job.events:
                if event.type == "ai.token":
                    break
        with anyio.fail_after(3):
            while not fake_llm.disconnects or not h.audits:
                await anyio.sleep(0.01)
    assert h.publisher.types("ai:req1") == ["ai.token", "ai.error"]
    assert h.publisher.events[-1][3]["error"] == "cancelled"
    assert [a.outcome for a in h.audits] == ["cancelled"]


async def test_slow_publisher_coalesces_tokens_without_losing_any(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\n")
    reply = " ".join(f"w{i}" for i in range(200))
    fake_llm.default = Behavior(reply=reply, token_delay=0.001)
    async with harness(fake_llm, tmp_path, delay=0.02) as h:
        events = await h.run("explain", "m.py")
    tokens = [e for e in events if e.type == "ai.token"]
    assert "".join(e.data["text"] for e in tokens) == reply
    assert len(tokens) < 200 and [e.data["index"] for e in tokens] == list(range(len(tokens)))
    assert events[-1].data["usage"]["completion_tokens"] == 200


async def test_rewrite_failures(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\ny = 2\n")
    fake_llm.script(Behavior(reply=" ".join(["x"] * 40)), Behavior(reply="<think>hmm</think>\n```python\n```"))
    async with harness(fake_llm, tmp_path, llm_max_tokens=16) as h:
        cut = await h.run("rewrite", "m.py", start_line=1, end_line=1, text="bump")
        empty = await h.run("rewrite", "m.py", start_line=1, end_line=1, text="bump")
    assert cut[-1].type == "ai.error" and cut[-1].data["error"] == "ai_answer_truncated"
    assert empty[-1].type == "ai.error" and empty[-1].data["error"] == "ai_no_code"
    assert [a.outcome for a in h.audits] == ["error:ai_answer_truncated", "error:ai_no_code"]


async def test_big_targets_are_read_in_a_worker_thread(fake_llm: FakeLLM, tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("".join(f"v{i} = {i}\n" for i in range(40_000)))  # > 256 KiB
    (tmp_path / "small.py").write_text("x = 1\n")
    (tmp_path / "link.py").symlink_to("/etc/hostname")
    async with harness(fake_llm, tmp_path) as h:
        big = await h.run("explain", "big.py", start_line=20_000, end_line=20_001)
        small = await h.run("explain", "small.py")
        with pytest.raises(DomainError):
            await h.start("explain", "link.py")  # the stat says "small", the safe read still refuses
    assert big[-1].type == small[-1].type == "ai.done"
    assert "v20000 = 20000" in fake_llm.chat_requests[0].text
