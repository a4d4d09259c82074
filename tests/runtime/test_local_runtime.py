"""The local-process runtime with the fake IDE (HTTP + WebSocket echo) standing in for code-server."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from app.services.runtime.base import (
    ExecExit,
    ExecOutput,
    ExecRequest,
    LogLine,
    StartFailed,
    StorageRef,
    UnknownWorkspace,
    WorkspaceNotRunning,
    WorkspaceSpec,
)
from app.services.runtime.common import unix_from_iso
from app.services.runtime.local import LocalRuntime
from app.services.runtime.local_support import group_alive
from tests.support.runtime import fake_ide_command, new_workspace_id

pytestmark = pytest.mark.anyio


def make_spec(tmp: Path, hub_id: str = "t-local", **overrides: object) -> WorkspaceSpec:
    """A local workspace in ``tmp``."""
    values: dict[str, object] = {
        "id": new_workspace_id(),
        "owner": "3",
        "image": "",
        "hub_id": hub_id,
        "storage": StorageRef.directory(str(tmp / "ws")),
        "env": {"FOO": "bar"},
    }
    values.update(overrides)
    return WorkspaceSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    """A local runtime over a fresh state dir; leaving it stops every IDE it started."""
    async with LocalRuntime(tmp_path / "run", fake_ide_command()) as rt:
        yield rt


async def test_start_http_websocket_exec_logs_status_stop(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    endpoint = await runtime.start(spec, ready_timeout=20)
    assert endpoint.host == "127.0.0.1"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{endpoint.url}/healthz")).text == "ok"
        echoed = (await client.get(f"{endpoint.url}/p?x=1")).json()
    assert echoed["path"] == "/p?x=1" and echoed["cwd"] == spec.storage.name
    async with connect(f"ws://{endpoint.host}:{endpoint.port}/ws") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"

    result = await runtime.exec(spec.id, ExecRequest(command="echo $FOO; pwd; env | grep -c ^CODEHUB_ || true"))
    assert result.exit_code == 0
    assert result.stdout == f"bar\n{spec.storage.name}\n0\n"
    result = await runtime.exec(spec.id, ExecRequest(command=["sh", "-c", "echo $X; exit 5"], env={"X": "y"}))
    assert (result.exit_code, result.stdout) == (5, "y\n")

    lines = await runtime.logs(spec.id, tail=50)
    assert any("fake-ide listening" in line.text for line in lines)
    assert any(line.text == "GET /p?x=1" for line in lines)
    assert all(line.at.endswith("Z") for line in lines)
    assert await runtime.logs(spec.id, since=time.time() + 60) == []

    status = await runtime.status(spec.id)
    assert status.pids >= 1 and status.memory_used_bytes > 0 and status.memory_limit_bytes > 0

    assert await runtime.poll(spec.id) is None
    assert await runtime.stop(spec.id, grace=5) == 0
    assert await runtime.poll(spec.id) == 0
    with pytest.raises(WorkspaceNotRunning):
        await runtime.exec(spec.id, ExecRequest(command="true"))
    assert any("terminated" in line.text for line in await runtime.logs(spec.id))
    await runtime.remove(spec.id, purge=True)
    assert not Path(spec.storage.name).exists()
    with pytest.raises(UnknownWorkspace):
        await runtime.poll(spec.id)


async def test_exec_hides_hub_secrets(runtime: LocalRuntime, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CODEHUB_LLM_API_KEY", "sk-secret")
    spec = make_spec(tmp_path)
    await runtime.start(spec, ready_timeout=20)
    result = await runtime.exec(spec.id, ExecRequest(command="env"))
    assert "sk-secret" not in result.stdout and "CODEHUB_WORKSPACE_ID=" not in result.stdout


async def test_exec_timeout_cap_and_stream(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    await runtime.start(spec, ready_timeout=20)
    began = time.monotonic()
    result = await runtime.exec(spec.id, ExecRequest(command="echo go; sleep 41 & sleep 42", timeout_s=1))
    assert result.timed_out and result.exit_code == 137 and result.stdout == "go\n"
    assert time.monotonic() - began < 10
    leftovers = await runtime.exec(spec.id, ExecRequest(command="ps -eo args"))
    assert "sleep 41" not in leftovers.stdout

    result = await runtime.exec(spec.id, ExecRequest(command="yes | head -c 300000", max_output_bytes=777))
    assert result.truncated and len(result.stdout) == 777 and result.exit_code == 0

    items = [item async for item in runtime.exec_stream(spec.id, ExecRequest(command="echo a; echo b >&2; exit 2"))]
    outputs = {(i.stream, i.data) for i in items if isinstance(i, ExecOutput)}
    assert outputs == {("stdout", "a\n"), ("stderr", "b\n")}
    assert isinstance(items[-1], ExecExit) and items[-1].exit_code == 2


async def test_follow_logs_streams_new_lines(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    endpoint = await runtime.start(spec, ready_timeout=20)
    found = anyio.Event()

    async def follow() -> None:
        async for line in runtime.follow_logs(spec.id):
            if line.text == "GET /followed":
                found.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.1)
        async with httpx.AsyncClient() as client:
            await client.get(f"{endpoint.url}/followed")
        with anyio.fail_after(10):
            await found.wait()


async def test_follow_logs_of_a_process_another_runtime_started(runtime: LocalRuntime, tmp_path: Path) -> None:
    """Another hub process (or this one after a restart) follows the IDE through its log file."""
    spec = make_spec(tmp_path)
    endpoint = await runtime.start(spec, ready_timeout=20)
    async with LocalRuntime(tmp_path / "run", fake_ide_command()) as other:
        seen: list[LogLine] = []
        ended = anyio.Event()

        async def follow() -> None:
            async for line in other.follow_logs(spec.id, tail=100):
                seen.append(line)
            ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            with anyio.fail_after(10):
                while not any("fake-ide listening" in line.text for line in seen):
                    await anyio.sleep(0.05)
            async with httpx.AsyncClient() as client:
                await client.get(f"{endpoint.url}/from-the-file")
            with anyio.fail_after(10):
                while not any(line.text == "GET /from-the-file" for line in seen):
                    await anyio.sleep(0.05)
            await runtime.stop(spec.id, grace=5)
            with anyio.fail_after(10):
                await ended.wait()
        assert seen == await runtime.logs(spec.id, tail=1000)
        since = [line async for line in other.follow_logs(spec.id, tail=100, since=unix_from_iso(seen[-2].at))]
        assert since == seen[-1:]


async def test_terminal_on_a_pty(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    await runtime.start(spec, ready_timeout=20)
    terminal = await runtime.open_terminal(spec.id, cols=90, rows=25, command=["sh"])
    try:
        await terminal.send(b"stty size; pwd\n")
        output = b""
        with anyio.fail_after(10):
            while b"25 90" not in output or spec.storage.name.encode() not in output:
                output += await terminal.receive()
        await terminal.resize(132, 43)
        await terminal.send(b"stty size; exit 0\n")
        with anyio.fail_after(10):
            while b"43 132" not in output:
                output += await terminal.receive()
    finally:
        await terminal.close()


async def test_ide_exit_and_timeout_fail_the_start(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, env={"FAKE_IDE_EXIT": "3"})
    with pytest.raises(StartFailed) as caught:
        await runtime.start(spec, ready_timeout=20)
    assert "code 3" in caught.value.detail and "fake-ide: exiting on request" in caught.value.logs
    spec = make_spec(tmp_path, env={"FAKE_IDE_DELAY": "30"})
    with pytest.raises(StartFailed) as caught:
        await runtime.start(spec, ready_timeout=1)
    assert "within 1s" in caught.value.detail
    assert await runtime.poll(spec.id) is not None


async def test_events_report_a_crash(runtime: LocalRuntime, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, hub_id="t-local-events")
    endpoint = await runtime.start(spec, ready_timeout=20)
    events = []

    async def collect() -> None:
        async for event in runtime.events("t-local-events"):
            events.append(event)
            return

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await anyio.sleep(0.05)
        os.kill(int(endpoint.container_id), 9)
        with anyio.fail_after(10):
            while not events:
                await anyio.sleep(0.02)
    assert events[0].workspace_id == spec.id and events[0].event == "die" and events[0].exit_code == 137


async def test_a_restarted_hub_finds_and_stops_its_processes(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, hub_id="t-local-restart")
    async with LocalRuntime(tmp_path / "run", fake_ide_command()) as first:
        endpoint = await first.start(spec, ready_timeout=20)
        pid = int(endpoint.container_id)
        async with LocalRuntime(tmp_path / "run", fake_ide_command()) as second:
            states = await second.list_states("t-local-restart")
            assert [(s.workspace_id, s.running) for s in states] == [(spec.id, True)]
            assert (await second.endpoint(spec.id)).port == endpoint.port
            await second.stop(spec.id, grace=5)
            assert not group_alive(pid)
            assert await second.poll(spec.id) is not None


async def test_status_caches_memory_and_redis() -> None:
    import secrets

    from redis.asyncio import Redis

    from app.services.runtime.base import ResourceStatus
    from app.services.runtime.cache import MemoryStatusCache, RedisStatusCache, cached_status
    from tests.support.services import need_redis

    status = ResourceStatus(cpu_percent=1.5, memory_used_bytes=10, memory_limit_bytes=20, pids=3, sampled_at="t")
    calls = []

    async def load() -> ResourceStatus:
        calls.append(1)
        return status

    memory = MemoryStatusCache(max_entries=2)
    assert await cached_status(memory, "w1", 30, load) == status
    assert await cached_status(memory, "w1", 30, load) == status and len(calls) == 1
    await memory.drop("w1")
    await cached_status(memory, "w1", 30, load)
    assert len(calls) == 2
    await memory.set("w2", status, 30)
    await memory.set("w3", status, 30)
    assert len(memory._items) == 2
    await memory.set("w4", status, -1)
    assert await memory.get("w4") is None

    redis = Redis.from_url(need_redis())
    try:
        cache = RedisStatusCache(redis, f"codehub-test-{secrets.token_hex(4)}")
        assert await cache.get("w1") is None
        await cache.set("w1", status, 30)
        assert await cache.get("w1") == status
        await cache.drop("w1")
        assert await cache.get("w1") is None
    finally:
        await redis.aclose()
