"""Storage backends under test: the same sandbox as a local directory, a Docker volume, or a Kubernetes claim
(of a stopped workspace: files through a helper pod; of a running one: through the workspace pod), called
blocking.

``Backend`` wraps a ``WorkspaceStorage`` for synchronous tests (calls go through an anyio blocking portal,
whose loop also owns the runtime's clients) and looks at the files from outside the seam: the local directory
itself, or the volume or claim through plain commands where it is mounted (``tar``, ``ls``, ``cat``).
A claim is one per session and kind, emptied and filled with the sandbox again for each test.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from app.services.files.paths import normalize
from app.services.files.remote import mode_kind
from app.services.files.storage import LocalStorage, WorkspaceStorage
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.kubernetes.runtime import KubernetesRuntime
from tests.support.files import Sandbox, snapshot
from tests.support.kubernetes import ensure_volumes, kube_namespace, kube_runtime
from tests.support.runtime import remove_hub_containers, spec_for
from tests.support.services import TEST_IMAGE, need_docker, need_kubernetes

T = TypeVar("T")
BACKENDS = ["directory", "volume", "claim-stopped", "claim-running"]
WIPE = 'find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +'


@dataclass
class Backend:
    """A workspace storage and a view of its files from outside the seam."""

    kind: str
    storage: WorkspaceStorage
    portal: BlockingPortal
    sandbox: Sandbox | None = None
    files: Any = None  # the volume's or claim's ``RemoteFiles`` (``run``, ``lstat``, ``path``, ``home``)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run a storage coroutine function to completion."""
        return self.portal.call(lambda: fn(*args, **kwargs))

    def outside_state(self) -> dict[str, tuple[object, ...]]:
        """Everything beside the project (the ``outside`` directory and the other top-level names)."""
        if self.files is None:
            assert self.sandbox is not None
            return snapshot(self.sandbox.top, skip=("ws",))
        files = self.files
        state: dict[str, tuple[object, ...]] = {name: ("top",) for name in self.top_names()}
        code, out, err = self.portal.call(lambda: files.run(["tar", "-c", "-f", "-", "-C", files.home, "outside"]))
        assert code == 0, err
        with tarfile.open(fileobj=io.BytesIO(out)) as archive:
            for member in archive.getmembers():
                data = archive.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
                name = member.name.rstrip("/")
                state[name] = (member.type, hashlib.sha256(data).hexdigest(), member.linkname, member.mode & 0o7777)
        return state

    def top_names(self) -> set[str]:
        """Names beside the project (the sandbox's top directory, or the volume's home)."""
        if self.files is None:
            assert self.sandbox is not None
            return {p.name for p in self.sandbox.top.iterdir()}
        code, out, _err = self.portal.call(lambda: self.files.run(["ls", "-A", self.files.home]))  # type: ignore[union-attr]
        assert code == 0
        return set(out.decode().split())

    def kind_of(self, path: str) -> str | None:
        """The entry at ``path`` itself (``file``, ``dir``, ``symlink``, ``other``) or None."""
        if self.files is None:
            assert self.sandbox is not None
            try:
                mode = (self.sandbox.root / path).lstat().st_mode
            except FileNotFoundError:
                return None
            return mode_kind(mode)
        found = self.portal.call(lambda: self.files.lstat(normalize(path)))  # type: ignore[union-attr]
        return None if found is None else found.kind

    def read(self, path: str) -> bytes:
        """A file's bytes as the engine (or the disk) has them."""
        if self.files is None:
            assert self.sandbox is not None
            return (self.sandbox.root / path).read_bytes()
        code, out, err = self.portal.call(lambda: self.files.run(["cat", "--", self.files.path(normalize(path))]))  # type: ignore[union-attr]
        assert code == 0, err
        return out


def _tar_sandbox(sandbox: Sandbox, *, fifos: bool = True) -> bytes:
    """The sandbox as the volume's home: ``ws`` becomes ``project``; sockets and devices are left out."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.ischr() or info.isblk() or (info.isfifo() and not fifos):
            return None
        info.uid = info.gid = 1000
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(sandbox.root, arcname="project", filter=keep)
        archive.add(sandbox.outside, arcname="outside", filter=keep)
    return buffer.getvalue()


@contextmanager
def docker_portal() -> Iterator[tuple[BlockingPortal, DockerRuntime, str]]:
    """A portal whose loop holds a Docker runtime on the local engine, with a hub id of its own."""
    need_docker(TEST_IMAGE)
    hub_id = f"t-st-{secrets.token_hex(4)}"
    with start_blocking_portal() as portal:
        runtime = DockerRuntime("unix:///var/run/docker.sock", hub_id=hub_id, helper_image=TEST_IMAGE)
        portal.call(runtime.__aenter__)
        try:
            yield portal, runtime, hub_id
        finally:
            portal.call(runtime.__aexit__, None, None, None)
            remove_hub_containers(hub_id)


@asynccontextmanager
async def _kube_claims() -> AsyncIterator[tuple[KubernetesRuntime, dict[str, str]]]:
    """A runtime in a namespace of its own, with a stopped workspace's claim and a running workspace."""
    ensure_volumes(2)
    async with (
        kube_namespace("files") as namespace,
        kube_runtime(namespace, hub_id=f"t-kf-{secrets.token_hex(4)}") as rt,
    ):
        stopped, running = spec_for(rt, rt.hub_id, Path("/nonexistent")), spec_for(rt, rt.hub_id, Path("/nonexistent"))
        await rt.start(running, ready_timeout=60)
        yield rt, {"claim-stopped": stopped.id, "claim-running": running.id}


@contextmanager
def kube_portal() -> Iterator[tuple[BlockingPortal, KubernetesRuntime, dict[str, str]]]:
    """A portal whose loop holds a Kubernetes runtime and the two claims (by backend kind) of ``_kube_claims``."""
    need_kubernetes()
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(_kube_claims()) as (rt, ids):
        yield portal, rt, ids


def make_backend(kind: str, sandbox: Sandbox, portal: BlockingPortal, runtime: Any, workspace_id: str = "") -> Backend:
    """The sandbox as a ``kind`` storage (a claim: ``workspace_id``'s, emptied first)."""
    if kind == "directory":
        return Backend(kind, LocalStorage(sandbox.root), portal, sandbox=sandbox)
    assert runtime is not None
    if kind == "volume":
        workspace_id = "w" + secrets.token_hex(5)
        storage = runtime.storage(workspace_id)
        files = storage.files
        portal.call(files.ensure)
        portal.call(lambda: files._put(files.home, _tar_sandbox(sandbox)))
    else:
        storage = runtime.storage(workspace_id)
        files = storage.files
        portal.call(files.ensure)
        for argv, data in (
            (["sh", "-c", WIPE, "sh", files.home], b""),
            (["tar", "-x", "-o", "-f", "-", "-C", files.home], _tar_sandbox(sandbox, fifos=False)),
            (["mkfifo", files.path(("fifo",))], b""),
        ):
            code, _out, err = portal.call(lambda argv=argv, data=data: files.run(argv, data))
            assert code == 0, err
    if (sandbox.root / "sock").exists():  # a socket cannot travel in a tar: a FIFO is the same kind of entry
        portal.call(lambda: files.run(["mkfifo", files.path(("sock",))]))
    return Backend(kind, storage, portal, sandbox=None, files=files)


def drop_backend(backend: Backend, runtime: Any) -> None:
    """Remove a volume backend's helper and volume (a claim is kept for the next test)."""
    if backend.kind == "volume" and runtime is not None:
        workspace_id = backend.files.workspace_id
        backend.portal.call(lambda: runtime.remove(workspace_id, purge=True))


__all__ = ["BACKENDS", "Backend", "docker_portal", "drop_backend", "kube_portal", "make_backend"]
