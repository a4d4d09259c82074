"""A clone into a workspace's volume or claim is streamed: the repository's tar goes from the hub's disk to the
engine in chunks, never whole in the hub's memory (``tracemalloc`` peak well below the repository's size)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.services.runtime.docker import DockerRuntime
from app.services.workspaces import git as workspace_git
from tests.support.files import git
from tests.support.kubernetes import ensure_volumes, kube_namespace, kube_runtime
from tests.support.runtime import RUNTIMES, new_workspace_id
from tests.support.services import TEST_IMAGE, need_docker

pytestmark = pytest.mark.anyio
MIB = 1 << 20
PARTS = 6  # files of 4 MiB of random bytes: 24 MiB that no compression makes smaller


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A bare repository of about 24 MiB (file:// URL) and the sha256 of each of its files."""
    root = tmp_path_factory.mktemp("bigrepo")
    work = root / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    digests = {}
    for index in range(PARTS):
        data = os.urandom(4 * MIB)
        (work / f"part{index}.bin").write_bytes(data)
        digests[f"part{index}.bin"] = hashlib.sha256(data).hexdigest()
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "big")
    git(root, "clone", "-q", "--bare", str(work), str(root / "big.git"))
    return f"file://{root / 'big.git'}", digests


@pytest.fixture(scope="module", params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest, hub_id: str) -> AsyncIterator[Any]:
    """A Docker runtime on the local engine, or a Kubernetes runtime in a namespace of its own."""
    if request.param == "kubernetes":
        ensure_volumes(2)
        async with kube_namespace("clone") as namespace, kube_runtime(namespace, hub_id=hub_id) as rt:
            yield rt
        return
    async with DockerRuntime(need_docker(TEST_IMAGE), hub_id=hub_id, helper_image=TEST_IMAGE) as rt:
        yield rt


async def test_clone_is_streamed_into_the_workspace(runtime: Any, big_repo: tuple[str, dict[str, str]]) -> None:
    url, digests = big_repo
    workspace_id = new_workspace_id()
    storage = runtime.storage(workspace_id)
    await storage.ensure()

    async def fill(dest: Path) -> None:
        await workspace_git.clone(url, dest)

    tracemalloc.start()
    try:
        await storage.populate(fill)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert peak < 8 * MIB, f"hub peak {peak / MIB:.1f} MiB for a {PARTS * 4} MiB repository"
        files = storage.files
        code, out, err = await files.run(["sh", "-c", 'cd -- "$1" && sha256sum part*.bin', "sh", files.project])
        assert code == 0, err
        seen = dict(reversed(line.split()) for line in out.decode().splitlines())
        assert seen == digests
    finally:
        await runtime.remove(workspace_id, purge=True)
