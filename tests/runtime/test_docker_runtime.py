"""The container runtimes against real engines and the locally built workspace image: each test runs on the
Docker engine and on the Kubernetes test cluster (``runtime`` is parametrized), Docker-only checks say so."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.services.runtime.base import (
    ExecExit,
    ExecOutput,
    ExecRequest,
    ImageNotFound,
    StartFailed,
    UnknownWorkspace,
    WorkspaceNotRunning,
    WorkspaceSpec,
)
from app.services.runtime.cache import MemoryStatusCache
from app.services.runtime.common import resolve_container_user
from app.services.runtime.docker import IDE_CAPABILITIES, DockerRuntime
from app.services.runtime.kubernetes.runtime import KubernetesRuntime
from tests.support.kubernetes import ensure_volumes, kube_namespace, kube_runtime
from tests.support.runtime import RUNTIMES, project_of, spec_for
from tests.support.services import CODE_SERVER_IMAGE, TEST_IMAGE, need_docker

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024


@pytest.fixture(scope="module", params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest, hub_id: str) -> AsyncIterator[Any]:
    """One runtime for the module (Docker, or Kubernetes in a namespace of its own), with an in-process cache."""
    if request.param == "kubernetes":
        ensure_volumes(10)
        async with kube_namespace("rt") as namespace, kube_runtime(namespace, hub_id=hub_id) as rt:
            yield rt
        return
    url = need_docker(TEST_IMAGE)
    async with DockerRuntime(url, status_cache=MemoryStatusCache(), status_ttl=30) as rt:
        yield rt


def docker_only(runtime: Any) -> DockerRuntime:
    """Skip a check of Docker's own objects on another runtime."""
    if not isinstance(runtime, DockerRuntime):
        pytest.skip("checks Docker's container and bind mount (the Kubernetes pod: test_kubernetes_runtime.py)")
    return runtime


@pytest.fixture(scope="module")
async def running(
    runtime: DockerRuntime, hub_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[WorkspaceSpec, object]]:
    """One running workspace shared by the read-only tests of this module."""
    spec = spec_for(runtime, hub_id, tmp_path_factory.mktemp("docker"))
    endpoint = await runtime.start(spec, ready_timeout=30)
    yield spec, endpoint
    await runtime.remove(spec.id)


async def test_endpoint_answers_http(running: tuple[WorkspaceSpec, object]) -> None:
    _, endpoint = running
    assert endpoint.port > 0 and endpoint.container_id
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{endpoint.url}/healthz")).text.strip() == "ok"
        echoed = (await client.get(f"{endpoint.url}/some/path?q=1")).json()
    assert echoed["path"] == "/some/path?q=1"


async def test_container_is_labelled_limited_and_hardened(runtime: DockerRuntime, running, hub_id: str) -> None:
    spec, endpoint = running
    docker = docker_only(runtime).docker
    assert endpoint.host == "127.0.0.1" and len(endpoint.container_id) == 64
    info = await docker.containers.container(endpoint.container_id).show()
    assert info["Name"] == f"/codehub-{spec.id}"
    labels = info["Config"]["Labels"]
    assert labels["codehub.workspace"] == spec.id
    assert labels["codehub.owner"] == "7"
    assert labels["codehub.hub"] == hub_id
    host = info["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 256 * MIB and host["MemorySwap"] == 256 * MIB
    assert host["PidsLimit"] == 128
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted(IDE_CAPABILITIES)
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PortBindings"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    assert host["Binds"] == [f"{spec.storage.name}:/workspace:rw"]
    assert host["RestartPolicy"]["Name"] == "no"
    user = resolve_container_user("auto")
    assert info["Config"]["User"] == f"{user[0]}:{user[1]}"
    assert "FOO=bar" in info["Config"]["Env"]
    status = info["State"]
    assert status["Running"] is True


async def test_exec_argv_shell_env_workdir(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    result = await runtime.exec(spec.id, ExecRequest(command=["echo", "a  b", "$FOO"]))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "a  b $FOO\n", "")
    result = await runtime.exec(
        spec.id, ExecRequest(command="echo $FOO $EXTRA; pwd; echo oops >&2; exit 3", env={"EXTRA": "x"})
    )
    assert result.exit_code == 3
    assert result.stdout == f"bar x\n{project_of(spec)}\n"
    assert result.stderr == "oops\n"
    assert result.duration_ms >= 0 and not result.truncated and not result.timed_out
    await runtime.exec(spec.id, ExecRequest(command="mkdir -p sub"))
    result = await runtime.exec(spec.id, ExecRequest(command="pwd", workdir="sub"))
    assert result.stdout == f"{project_of(spec)}/sub\n"


async def test_exec_timeout_kills_the_whole_group(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    began = time.monotonic()
    result = await runtime.exec(spec.id, ExecRequest(command="echo started; sleep 41 & sleep 42", timeout_s=1))
    assert result.timed_out and result.exit_code == 137
    assert result.stdout == "started\n"
    assert time.monotonic() - began < 10
    left = await runtime.exec(spec.id, ExecRequest(command="ps -o args"))
    assert "sleep 41" not in left.stdout and "sleep 42" not in left.stdout


async def test_exec_output_is_capped(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    result = await runtime.exec(spec.id, ExecRequest(command="yes | head -c 200000", max_output_bytes=1000))
    assert result.exit_code == 0
    assert result.truncated and len(result.stdout) == 1000


async def test_exec_stream_yields_output_live_then_exit(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    seen: list[tuple[float, object]] = []
    began = time.monotonic()
    request = ExecRequest(command="echo one; sleep 0.5; echo two >&2; exit 4")
    async for item in runtime.exec_stream(spec.id, request):
        seen.append((time.monotonic() - began, item))
    outputs = [item for _, item in seen if isinstance(item, ExecOutput)]
    assert [(o.stream, o.data) for o in outputs] == [("stdout", "one\n"), ("stderr", "two\n")]
    exit_item = seen[-1][1]
    assert isinstance(exit_item, ExecExit) and exit_item.exit_code == 4
    assert seen[0][0] < seen[-1][0] - 0.3, "the first chunk must arrive before the command ends"


async def test_files_written_in_the_container_belong_to_the_hub_user(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    docker_only(runtime)
    result = await runtime.exec(spec.id, ExecRequest(command="echo from-container > /workspace/made.txt"))
    assert result.exit_code == 0
    made = Path(spec.storage.name) / "made.txt"
    assert made.read_text() == "from-container\n"
    uid, gid = resolve_container_user("auto")
    assert (made.stat().st_uid, made.stat().st_gid) == (uid, gid)
    with made.open("a") as handle:  # the hub can write it too
        handle.write("from-hub\n")
    Path(spec.storage.name, "hub.txt").write_text("hub")
    if os.getuid() == 0:
        os.chown(Path(spec.storage.name, "hub.txt"), uid, gid)
    result = await runtime.exec(spec.id, ExecRequest(command="cat made.txt hub.txt && echo more >> hub.txt"))
    assert result.exit_code == 0 and result.stdout == "from-container\nfrom-hub\nhub"


async def test_logs_with_timestamps_since_and_follow(runtime: DockerRuntime, running) -> None:
    spec, endpoint = running
    lines = await runtime.logs(spec.id, tail=50)
    assert any("wsecho listening" in line.text for line in lines)
    assert all(line.at.endswith("Z") for line in lines)
    assert await runtime.logs(spec.id, tail=50, since=time.time() + 60) == []
    found = anyio.Event()

    async def follow() -> None:
        async for line in runtime.follow_logs(spec.id):
            if "/marker-for-follow" in line.text:
                found.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.2)
        async with httpx.AsyncClient() as client:
            await client.get(f"{endpoint.url}/marker-for-follow")
        with anyio.fail_after(10):
            await found.wait()


async def test_status_numbers_and_cache(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    status = await runtime.status(spec.id)
    assert status.memory_limit_bytes == 256 * MIB
    assert 0 < status.memory_used_bytes < 256 * MIB
    assert status.pids >= 1
    assert status.cpu_percent >= 0
    again = await runtime.status(spec.id)
    assert again == status, "a second call within the TTL comes from the cache"


async def test_terminal_runs_a_shell_with_resize(runtime: DockerRuntime, running) -> None:
    spec, _ = running
    terminal = await runtime.open_terminal(spec.id, cols=100, rows=30)
    try:
        await terminal.send(b"stty size; echo $((6*7))\n")
        output = b""
        with anyio.fail_after(10):
            while b"42" not in output or b"30 100" not in output:
                output += await terminal.receive()
        await terminal.resize(120, 40)
        with anyio.fail_after(10):  # a pod's resize reaches the tty asynchronously (its own channel): ask again
            while b"40 120" not in output:
                await terminal.send(b"stty size\n")
                with anyio.move_on_after(1):
                    while b"40 120" not in output:
                        output += await terminal.receive()
    finally:
        await terminal.close()


async def test_stop_poll_events_remove(runtime: DockerRuntime, hub_id: str, tmp_path: Path) -> None:
    spec = spec_for(runtime, hub_id, tmp_path)
    kept = isinstance(runtime, DockerRuntime)  # a stopped container stays; a stopped pod is deleted
    events: list[object] = []

    async def collect() -> None:
        async for event in runtime.events(hub_id):
            if event.workspace_id == spec.id:
                events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await anyio.sleep(0.2)
        await runtime.start(spec, ready_timeout=30)
        assert await runtime.poll(spec.id) is None
        states = await runtime.list_states(hub_id)
        assert any(s.workspace_id == spec.id and s.running for s in states)
        assert await runtime.stop(spec.id, grace=5) == 0
        state = await runtime.inspect(spec.id)
        if kept:
            assert await runtime.poll(spec.id) == 0
            assert state is not None and not state.running and state.exit_code == 0 and state.finished_at
        else:
            assert state is None
        with pytest.raises(WorkspaceNotRunning):
            await runtime.exec(spec.id, ExecRequest(command="true"))
        await runtime.remove(spec.id, purge=True)
        assert await runtime.inspect(spec.id) is None
        if kept:
            assert not Path(spec.storage.name).exists()
        with pytest.raises(UnknownWorkspace):
            await runtime.poll(spec.id)
        with anyio.fail_after(10):
            while not any(e.event == "destroy" for e in events):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    kinds = [e.event for e in events]
    assert kinds.index("start") < kinds.index("die") < kinds.index("destroy")
    assert next(e for e in events if e.event == "die").exit_code == 0


async def test_missing_image_fails_with_a_reason(runtime: DockerRuntime, hub_id: str, tmp_path: Path) -> None:
    spec = spec_for(runtime, hub_id, tmp_path, image="codehub/no-such-image:never")
    with pytest.raises(ImageNotFound) as caught:
        await runtime.start(spec)
    assert "codehub/no-such-image:never" in caught.value.detail
    assert caught.value.code == "image_not_found"
    assert await runtime.inspect(spec.id) is None


async def test_ide_that_exits_fails_the_start_with_its_logs(
    runtime: DockerRuntime, hub_id: str, tmp_path: Path
) -> None:
    spec = spec_for(runtime, hub_id, tmp_path, command=("sh", "-c", "echo boom-before-exit; exit 3"))
    with pytest.raises(StartFailed) as caught:
        await runtime.start(spec, ready_timeout=20)
    assert "code 3" in caught.value.detail
    assert "boom-before-exit" in caught.value.logs
    assert await runtime.poll(spec.id) == 3


async def test_ide_that_never_answers_times_out(runtime: DockerRuntime, hub_id: str, tmp_path: Path) -> None:
    spec = spec_for(runtime, hub_id, tmp_path, command=("sh", "-c", "echo still-booting; exec sleep 60"))
    with pytest.raises(StartFailed) as caught:
        await runtime.start(spec, ready_timeout=1.5)
    assert "did not answer HTTP within 1.5s" in caught.value.detail
    assert "still-booting" in caught.value.logs
    state = await runtime.inspect(spec.id)
    assert state is None or not state.running, "a timed-out start leaves nothing running"


async def test_start_replaces_a_leftover_container(runtime: DockerRuntime, hub_id: str, tmp_path: Path) -> None:
    spec = spec_for(runtime, hub_id, tmp_path)
    first = await runtime.start(spec, ready_timeout=30)
    second = await runtime.start(spec, ready_timeout=30)
    assert first.container_id != second.container_id
    mine = [s for s in await runtime.list_states(hub_id) if s.workspace_id == spec.id]
    assert [s.container_id for s in mine] == [second.container_id]
    await runtime.remove(spec.id)


async def test_engine_info(runtime: DockerRuntime) -> None:
    info = await runtime.info()
    assert info.ok and info.version and info.api_version and info.latency_ms >= 0
    dead: Any = (
        DockerRuntime("tcp://127.0.0.1:1")
        if isinstance(runtime, DockerRuntime)
        else KubernetesRuntime("/nonexistent/kubeconfig", "none")
    )
    async with dead:
        down = await dead.info()
    assert not down.ok and down.error


async def test_real_code_server_starts(runtime: DockerRuntime, hub_id: str, tmp_path: Path) -> None:
    if isinstance(runtime, DockerRuntime):
        need_docker(CODE_SERVER_IMAGE)
    spec = spec_for(runtime, hub_id, tmp_path, image=CODE_SERVER_IMAGE, mount="/home/coder/project", memory_mb=1024)
    endpoint = await runtime.start(spec, ready_timeout=60)
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{endpoint.url}/healthz")).status_code == 200
        result = await runtime.exec(spec.id, ExecRequest(command="id -u; touch /home/coder/project/x"))
        assert result.exit_code == 0, result.stderr
    finally:
        await runtime.remove(spec.id)
