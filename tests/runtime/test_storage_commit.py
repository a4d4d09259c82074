"""The Docker volume's commit paths and the contents cache, on the local engine: a single write (its bytes
written straight into the staged file), a batched commit of many files in several directories (its backups
removed after the answer when it deleted nothing), a batch that fails halfway and leaves every file as it
was, and a patch applied after a validate with a file changed in between (the cache never hands back stale
bytes)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import anyio
import pytest

from app.errors import Conflict
from app.services.files.patches import PatchLimits
from app.services.files.remote import RemoteChange
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.docker_volume import DockerVolumeFiles
from tests.support.runtime import remove_hub_containers
from tests.support.services import DOCKER_URL, TEST_IMAGE, need_docker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def volume() -> AsyncIterator[tuple[DockerRuntime, str]]:
    """A runtime on the local engine and a fresh workspace volume (removed afterwards)."""
    need_docker(TEST_IMAGE)
    hub_id = f"t-sc-{secrets.token_hex(4)}"
    workspace_id = "c" + secrets.token_hex(5)
    async with DockerRuntime(DOCKER_URL, hub_id=hub_id, helper_image=TEST_IMAGE) as runtime:
        try:
            await runtime.storage(workspace_id).ensure()
            yield runtime, workspace_id
        finally:
            await runtime.remove(workspace_id, purge=True)
    remove_hub_containers(hub_id)


async def _leftovers(files: DockerVolumeFiles) -> list[str]:
    code, out, _err = await files.run(["find", files.project, "-name", ".codehub-*"])
    assert code == 0
    return out.decode().split()


async def test_a_single_write_keeps_the_mode_and_leaves_nothing_behind(volume: tuple[DockerRuntime, str]) -> None:
    runtime, workspace_id = volume
    storage, files = runtime.storage(workspace_id), runtime.volume_files(workspace_id)
    await storage.write_file("run.sh", b"#!/bin/sh\n")
    await files.run(["chmod", "755", files.path(("run.sh",))])
    result = await storage.write_file("run.sh", b"#!/bin/sh\necho hi\n")
    assert not result.created
    assert (await files.lstat(("run.sh",))).mode & 0o777 == 0o755  # type: ignore[union-attr]
    await storage.write_file("empty.txt", b"")
    assert (await storage.read_raw("empty.txt", max_bytes=10)).data == b""
    assert (await storage.read_raw("run.sh", max_bytes=100)).data == b"#!/bin/sh\necho hi\n"
    assert await _leftovers(files) == []


async def test_a_batch_writes_and_deletes_in_many_directories(volume: tuple[DockerRuntime, str]) -> None:
    runtime, workspace_id = volume
    storage, files = runtime.storage(workspace_id), runtime.volume_files(workspace_id)
    for d in range(3):
        for i in range(4):
            await storage.write_file(f"d{d}/f{i}.txt", b"old\n")
    changes = [RemoteChange((f"d{d}", f"f{i}.txt"), f"new {d}{i}\n".encode()) for d in range(3) for i in range(3)]
    changes += [RemoteChange(("d0", "f3.txt"), None), RemoteChange(("n", "deep", "x.txt"), b"x\n")]
    async with files.exclusive(deferred=True):
        await files.lstat(("d0",))
        await files.commit(changes, [("n",), ("n", "deep")])
    for d in range(3):
        for i in range(3):
            assert (await storage.read_raw(f"d{d}/f{i}.txt", max_bytes=100)).data == f"new {d}{i}\n".encode()
    assert await files.lstat(("d0", "f3.txt")) is None
    assert (await storage.read_raw("d1/f3.txt", max_bytes=100)).data == b"old\n"
    assert (await storage.read_raw("n/deep/x.txt", max_bytes=100)).data == b"x\n"
    assert await _leftovers(files) == []
    # the lock was given back with the commit: another hub process takes it at once
    async with DockerRuntime(DOCKER_URL, hub_id=runtime.hub_id, helper_image=TEST_IMAGE) as other:
        with anyio.fail_after(10):
            await other.storage(workspace_id).write_file("after.txt", b"ok")


async def test_a_batch_that_deletes_nothing_leaves_its_backups_to_the_loop(
    volume: tuple[DockerRuntime, str],
) -> None:
    runtime, workspace_id = volume
    storage, files = runtime.storage(workspace_id), runtime.volume_files(workspace_id)
    for d in range(2):
        await storage.write_file(f"d{d}/f.txt", b"old\n")
    for attempt in range(2):
        async with files.exclusive(deferred=True):
            await files.lstat(("d0",))
            await files.commit([RemoteChange((f"d{d}", "f.txt"), b"new\n") for d in range(2)], [])
        if attempt == 0:  # removed before the loop reads the next request on this channel
            assert await _leftovers(files) == []
    await files._channels.drop(workspace_id)  # or when the loop's stdin closes, right after the answer
    async with DockerRuntime(DOCKER_URL, hub_id=runtime.hub_id, helper_image=TEST_IMAGE) as other:
        with anyio.fail_after(10):
            while await _leftovers(other.volume_files(workspace_id)):
                await anyio.sleep(0.05)
    assert (await storage.read_raw("d1/f.txt", max_bytes=100)).data == b"new\n"


async def test_a_batch_refused_in_one_directory_changes_nothing(volume: tuple[DockerRuntime, str]) -> None:
    runtime, workspace_id = volume
    storage, files = runtime.storage(workspace_id), runtime.volume_files(workspace_id)
    for name in ("a/1.txt", "a/2.txt", "b/1.txt"):
        await storage.write_file(name, b"before\n")
    await files.run(["chmod", "555", files.path(("b",))])  # b/ refuses the new content's rename
    try:
        changes = [
            RemoteChange(("a", "1.txt"), b"after\n"),
            RemoteChange(("a", "2.txt"), None),
            RemoteChange(("a", "3.txt"), b"new\n"),
            RemoteChange(("b", "1.txt"), b"after\n"),
        ]
        with pytest.raises(Conflict):
            await files.commit(changes, [])
    finally:
        await files.run(["chmod", "755", files.path(("b",))])
    for name in ("a/1.txt", "a/2.txt", "b/1.txt"):
        assert (await storage.read_raw(name, max_bytes=100)).data == b"before\n"
    assert await files.lstat(("a", "3.txt")) is None
    assert await _leftovers(files) == []


async def test_apply_after_validate_sees_a_change_made_in_between(volume: tuple[DockerRuntime, str]) -> None:
    runtime, workspace_id = volume
    storage, files = runtime.storage(workspace_id), runtime.volume_files(workspace_id)
    for i in range(3):
        await storage.write_file(f"p/f{i}.txt", b"one\ntwo\nthree\n")
    await anyio.sleep(0.05)  # the files' change times are now before the next look at them: they get a version
    diff = "".join(f"--- a/p/f{i}.txt\n+++ b/p/f{i}.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n" for i in range(3))
    assert (await storage.validate_patch(diff, limits=PatchLimits())).ok
    assert (await storage.validate_patch(diff, limits=PatchLimits())).ok  # from the cache
    await files.run(["sh", "-c", 'printf "one\\nzwei\\nthree\\n" > "$1"', "sh", files.path(("p", "f1.txt"))])
    assert not (await storage.validate_patch(diff, limits=PatchLimits())).ok
    with pytest.raises(Conflict):
        await storage.apply_patch(diff, limits=PatchLimits())
    assert (await storage.read_raw("p/f0.txt", max_bytes=100)).data == b"one\ntwo\nthree\n"
    assert (await storage.read_raw("p/f1.txt", max_bytes=100)).data == b"one\nzwei\nthree\n"


async def test_request_fields_arrive_intact_read_by_line_and_as_one_block(volume: tuple[DockerRuntime, str]) -> None:
    runtime, workspace_id = volume
    files = runtime.volume_files(workspace_id)
    odd = ["a b", " lead", "trail ", "*", "-", "$HOME", "'q'", "back\\slash", "tab\there", "é"]
    for fields in (odd, odd * 40, [*odd, ""], [*odd * 40, ""]):  # short; long (one ``dd``); an empty field: by line
        code, out, _err = await files.run(["printf", "%s\\n", *fields])
        assert code == 0
        assert out.decode().split("\n")[:-1] == fields
    big = secrets.token_bytes(70_000)  # a staged payload above the size sent in the request's own write
    await runtime.storage(workspace_id).write_file("big.bin", big)
    assert (await runtime.storage(workspace_id).read_raw("big.bin", max_bytes=1 << 20)).data == big
