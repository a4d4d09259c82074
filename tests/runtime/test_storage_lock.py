"""Mutations of one workspace's volume from several hub processes take turns (the engine-side lock in the file
helper), and a hub that dies holding the lock does not keep it.

Two ``DockerRuntime`` instances on one engine stand for two hub processes: each has its own in-process locks
and its own channel to the helper, as separate processes do; the last test uses a real second process."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from app.errors import Conflict, PreconditionFailed
from app.services.files.patches import PatchLimits
from app.services.runtime.docker import DockerRuntime
from tests.support.runtime import remove_hub_containers
from tests.support.services import DOCKER_URL, TEST_IMAGE, need_docker, need_second_engine

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "second"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str, str]]:
    """(engine URL, hub id, workspace id); everything of the hub id is removed afterwards."""
    need_docker(TEST_IMAGE)
    url = DOCKER_URL if request.param == "local" else need_second_engine()
    hub_id = f"t-lk-{secrets.token_hex(4)}"
    try:
        yield url, hub_id, "w" + secrets.token_hex(5)
    finally:
        remove_hub_containers(hub_id, docker_host=None if url == DOCKER_URL else url)


def _runtime(url: str, hub_id: str) -> DockerRuntime:
    return DockerRuntime(url, hub_id=hub_id, helper_image=TEST_IMAGE)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_if_match_writes_from_two_hubs_never_both_win(engine: tuple[str, str, str]) -> None:
    """Both hubs write the same file with If-Match of the same version: exactly one wins per round, the others
    get 412 (no lost update between one hub's check and its write)."""
    url, hub_id, workspace_id = engine
    async with _runtime(url, hub_id) as first, _runtime(url, hub_id) as second:
        await first.storage(workspace_id).write_file("counter.txt", b"0")
        for round_ in range(4):
            current = await first.storage(workspace_id).read_raw("counter.txt", max_bytes=100)
            base = _sha(current.data)
            outcomes: list[str] = []

            async def write(runtime: DockerRuntime, label: str, base: str = base, seen: list[str] = outcomes) -> None:
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


async def test_multi_file_patches_from_two_hubs_do_not_interleave(engine: tuple[str, str, str]) -> None:
    """Two hubs apply conflicting two-file patches at once: one applies to both files, the other answers 409,
    and the files never mix the two."""
    url, hub_id, workspace_id = engine

    def diff(word: str) -> str:
        hunk = f"@@ -1,3 +1,3 @@\n top\n-base\n+{word}\n bottom\n"
        return "".join(f"--- a/{name}\n+++ b/{name}\n{hunk}" for name in ("a.txt", "b.txt"))

    async with _runtime(url, hub_id) as first, _runtime(url, hub_id) as second:
        for round_ in range(4):
            for name in ("a.txt", "b.txt"):
                await first.storage(workspace_id).write_file(name, b"top\nbase\nbottom\n")
            outcomes: dict[str, str] = {}

            async def apply(runtime: DockerRuntime, word: str, outcomes: dict[str, str] = outcomes) -> None:
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


async def test_a_write_waits_for_another_hub_holding_the_lock(engine: tuple[str, str, str]) -> None:
    """While one hub holds the workspace's lock, the other's write waits; it lands once the lock is given back."""
    url, hub_id, workspace_id = engine
    async with _runtime(url, hub_id) as first, _runtime(url, hub_id) as second:
        await first.storage(workspace_id).ensure()
        files = first.volume_files(workspace_id)
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


async def test_the_lock_of_a_hub_that_dies_is_given_back(engine: tuple[str, str, str], tmp_path: Path) -> None:
    """A real second process takes the lock and is killed (SIGKILL) while holding it: this hub's write then
    goes through (the helper's loop of the dead hub ends with its connection and gives the lock back)."""
    url, hub_id, workspace_id = engine
    async with _runtime(url, hub_id) as runtime:
        await runtime.storage(workspace_id).ensure()
        ready = tmp_path / "held"
        script = (
            "import anyio, sys, pathlib\n"
            "from app.services.runtime.docker import DockerRuntime\n"
            "async def main():\n"
            f"    async with DockerRuntime({url!r}, hub_id={hub_id!r}, helper_image={TEST_IMAGE!r}) as rt:\n"
            f"        async with rt.volume_files({workspace_id!r}).exclusive():\n"
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
