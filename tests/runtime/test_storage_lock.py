"""Mutations of one workspace's volume or claim from several hub processes take turns (the engine-side lock in
the file helper; on Kubernetes the lock directory on the claim), and a hub that dies holding the lock does not
keep it.

Two runtime instances on one engine stand for two hub processes: each has its own in-process locks and its own
channel to the helper, as separate processes do; the last test uses a real second process."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from app.errors import Conflict, PreconditionFailed
from app.services.files.patches import PatchLimits
from app.services.runtime.docker import DockerRuntime
from tests.support.kubernetes import ensure_volumes, kube_namespace, kube_runtime
from tests.support.runtime import remove_hub_containers
from tests.support.services import DOCKER_URL, TEST_IMAGE, need_docker, need_second_engine

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Engine:
    """Where the workspace's files are: a Docker engine's URL, or a namespace of the Kubernetes test cluster."""

    url: str
    hub_id: str
    workspace_id: str
    namespace: str = ""

    def runtime_code(self) -> str:
        """``runtime()`` as Python source, for a second process."""
        if self.namespace:
            return f"kube_runtime({self.namespace!r}, hub_id={self.hub_id!r})"
        return f"DockerRuntime({self.url!r}, hub_id={self.hub_id!r}, helper_image={TEST_IMAGE!r})"

    def runtime(self) -> Any:
        """A runtime on this engine (a hub process of its own)."""
        if self.namespace:
            return kube_runtime(self.namespace, hub_id=self.hub_id)
        return DockerRuntime(self.url, hub_id=self.hub_id, helper_image=TEST_IMAGE)


@pytest.fixture(params=["local", "second", "claim"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """The engine and a fresh workspace id; everything of the hub id is removed afterwards."""
    hub_id, workspace_id = f"t-lk-{secrets.token_hex(4)}", "w" + secrets.token_hex(5)
    if request.param == "claim":
        ensure_volumes(1)
        async with kube_namespace("lock") as namespace:
            yield Engine("", hub_id, workspace_id, namespace)
        return
    need_docker(TEST_IMAGE)
    url = DOCKER_URL if request.param == "local" else need_second_engine()
    try:
        yield Engine(url, hub_id, workspace_id)
    finally:
        remove_hub_containers(hub_id, docker_host=None if url == DOCKER_URL else url)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_if_match_writes_from_two_hubs_never_both_win(engine: Engine) -> None:
    """Both hubs write the same file with If-Match of the same version: exactly one wins per round, the others
    get 412 (no lost update between one hub's check and its write)."""
    workspace_id = engine.workspace_id
    async with engine.runtime() as first, engine.runtime() as second:
        await first.storage(workspace_id).write_file("counter.txt", b"0")
        for round_ in range(4):
            current = await first.storage(workspace_id).read_raw("counter.txt", max_bytes=100)
            base = _sha(current.data)
            outcomes: list[str] = []

            async def write(runtime: Any, label: str, base: str = base, seen: list[str] = outcomes) -> None:
                try:
                    await runtime.storage(workspace_id).write_file("counter.txt", label.encode(), if_match=base)
                    seen.append("won")
                except PreconditionFailed:
                    seen.append("412")

            async with anyio.create_task_group() as tg:
                for index in range(3):
                    tg.start_soon(write, first, f"first-{round_}-{index}")
                    tg.start_soon(write, second, f"second-{round_}-{index}")
            assert sorted(outcomes) == ["412"] * 5 + ["won"], outcomes


async def test_multi_file_patches_from_two_hubs_do_not_interleave(engine: Engine) -> None:
    """Two hubs apply conflicting two-file patches at once: one applies to both files, the other answers 409,
    and the files never mix the two."""
    workspace_id = engine.workspace_id

    def diff(word: str) -> str:
        hunk = f"@@ -1,3 +1,3 @@\n top\n-base\n+{word}\n bottom\n"
        return "".join(f"--- a/{name}\n+++ b/{name}\n{hunk}" for name in ("a.txt", "b.txt"))

    async with engine.runtime() as first, engine.runtime() as second:
        for round_ in range(4):
            for name in ("a.txt", "b.txt"):
                await first.storage(workspace_id).write_file(name, b"top\nbase\nbottom\n")
            outcomes: dict[str, str] = {}

            async def apply(runtime: Any, word: str, outcomes: dict[str, str] = outcomes) -> None:
                try:
                    await runtime.storage(workspace_id).apply_patch(diff(word), limits=PatchLimits())
                    outcomes[word] = "applied"
                except Conflict as exc:
                    outcomes[word] = exc.code

            async with anyio.create_task_group() as tg:
                tg.start_soon(apply, first, f"first{round_}")
                tg.start_soon(apply, second, f"second{round_}")
            winners = [word for word, outcome in outcomes.items() if outcome == "applied"]
            assert len(winners) == 1, outcomes
            assert sorted(outcomes.values()) == ["applied", "patch_conflict"], outcomes
            for name in ("a.txt", "b.txt"):
                found = await second.storage(workspace_id).read_raw(name, max_bytes=100)
                assert found.data == f"top\n{winners[0]}\nbottom\n".encode()


async def test_a_write_waits_for_another_hub_holding_the_lock(engine: Engine) -> None:
    """While one hub holds the workspace's lock, the other's write waits; it lands once the lock is given back."""
    workspace_id = engine.workspace_id
    async with engine.runtime() as first, engine.runtime() as second:
        await first.storage(workspace_id).ensure()
        files = first.storage(workspace_id).files
        done = anyio.Event()

        async def write() -> None:
            await second.storage(workspace_id).write_file("late.txt", b"late")
            done.set()

        async with anyio.create_task_group() as tg:
            async with files.exclusive():
                tg.start_soon(write)
                with anyio.move_on_after(1.0):
                    await done.wait()
                assert not done.is_set(), "the write did not wait for the lock"
                assert await files.lstat(("late.txt",)) is None
            with anyio.fail_after(10):
                await done.wait()
        assert (await first.storage(workspace_id).read_raw("late.txt", max_bytes=10)).data == b"late"


async def test_the_lock_of_a_hub_that_dies_is_given_back(engine: Engine, tmp_path: Path) -> None:
    """A real second process takes the lock and is killed (SIGKILL) while holding it: this hub's write then
    goes through (the helper's loop of the dead hub ends with its connection and gives the lock back)."""
    workspace_id = engine.workspace_id
    async with engine.runtime() as runtime:
        await runtime.storage(workspace_id).ensure()
        ready = tmp_path / "held"
        script = (
            "import anyio, sys, pathlib\n"
            "from app.services.runtime.docker import DockerRuntime\n"
            "from tests.support.kubernetes import kube_runtime\n"
            "async def main():\n"
            f"    async with {engine.runtime_code()} as rt:\n"
            f"        async with rt.storage({workspace_id!r}).files.exclusive():\n"
            f"            pathlib.Path({str(ready)!r}).touch()\n"
            "            await anyio.sleep(600)\n"
            "anyio.run(main)\n"
        )
        holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert holder.poll() is None, "the holder process ended early"
                assert time.monotonic() < deadline, "the holder never took the lock"
                await anyio.sleep(0.1)
            with anyio.move_on_after(1.0):
                await runtime.storage(workspace_id).write_file("x.txt", b"blocked")
                pytest.fail("the write did not wait for the other process's lock")
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
        with anyio.fail_after(20):
            await runtime.storage(workspace_id).write_file("x.txt", b"after")
        assert (await runtime.storage(workspace_id).read_raw("x.txt", max_bytes=10)).data == b"after"
