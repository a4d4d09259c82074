"""The storage seam on a workspace's PVC: every primitive is one request to a loop kept running in a pod.

The loop (``file_channel``) runs in the workspace pod while it runs (the IDE's own view of the files), else in
a short-lived helper pod ``codehub-files-<id>`` of the workspace image that mounts only the PVC (read-only root,
no capabilities, the workspace user, gone after ``HELPER_LIFETIME`` seconds or when the workspace starts); a
loop whose pod went away is opened again in the pod that holds the claim now. The scripts are the Docker
volume's (``docker_volume_support``). A whole-tree upload (a clone) is streamed from a temporary tar on the
hub's disk through an exec of its own, read with ``head -c N`` since the channel protocol cannot close stdin.
Every decision (paths, links, If-Match, patches) is made on the hub by ``RemoteStorage``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from app.errors import Conflict, NotFound
from app.services.files.paths import bad_path, join
from app.services.files.remote import NodeKind, RemoteChange, RemoteStat
from app.services.runtime.docker_channel import HelperChannel, HelperChannels
from app.services.runtime.docker_volume_support import (
    batch_request,
    failure,
    message,
    parse_listing,
    parse_snapshot,
    tar_tree,
)
from app.services.runtime.kubernetes import manifests, pod_exec, states
from app.services.runtime.kubernetes.connection import KubeConnection, KubeError
from app.services.runtime.kubernetes.file_channel import open_channel
from app.services.runtime.kubernetes.manifests import FILES_CONTAINER

log = logging.getLogger(__name__)
# the runtime (``KubernetesRuntime``) is passed in untyped: importing it here would make an import cycle
KubernetesRuntime = Any

UNTAR = 'n=$1; cd -- "$2" || exit 4; head -c "$n" | tar -x -f - -o'
UPLOAD_CHUNK = 64 << 10
Target = Callable[[], Awaitable[tuple[str, str]]]
"""The (pod, container) to run file commands in, made ready on demand."""
LOCK_TIMEOUT = 30.0
LOCK_STALE = 120


async def helper_target(rt: KubernetesRuntime, workspace_id: str, image: str) -> tuple[str, str]:
    """The running file helper pod of a stopped workspace (made, or made again, on demand)."""
    name = rt.helper_pod(workspace_id)
    helper = await rt.pod(name)
    if helper is not None and states.terminated(helper, FILES_CONTAINER) is not None:
        await rt.delete_pod(name, grace=0, wait=True)
        helper = None
    if helper is None:
        await rt.ensure_claim(workspace_id, rt.hub_id)
        body = manifests.helper_manifest(workspace_id, rt.hub_id, image=image, home=rt.home, user=rt.user)
        try:
            helper = await rt.conn.request("POST", rt.conn.path("pods"), body=body)
        except KubeError as exc:
            if exc.api_status != 409:
                raise
            helper = await rt.pod(name)
    deadline = time.monotonic() + rt.schedule_timeout
    while helper is None or not states.is_running(helper, FILES_CONTAINER):
        ended = helper is not None and states.terminated(helper, FILES_CONTAINER) is not None
        if time.monotonic() > deadline or ended:
            reason, message = states.waiting_reason(helper or {})
            raise Conflict(f"the file helper pod did not start: {reason} {message}".strip(), code="storage_error")
        await anyio.sleep(0.2)
        helper = await rt.pod(name)
    return name, FILES_CONTAINER


class KubeVolumeFiles:
    """``RemoteFiles`` on one workspace's PVC, through ``target()``'s pod."""

    def __init__(
        self,
        conn: KubeConnection,
        *,
        workspace_id: str,
        home: str,
        user: tuple[int, int],
        target: Target,
        purge: Callable[[], Awaitable[None]],
        ready: set[str],
        channels: HelperChannels,
        tasks: Callable[[], anyio.abc.TaskGroup],
    ) -> None:
        self.conn, self.workspace_id = conn, workspace_id
        self._channels, self._tasks = channels, tasks
        self._purge, self._ready = purge, ready
        self.home = home.rstrip("/") or "/"
        self.project = f"{self.home.rstrip('/')}/project"
        self.user = user
        self._target = target

    def path(self, parts: tuple[str, ...]) -> str:
        """The absolute path of ``parts`` in the pod (names with a newline are refused)."""
        if any("\n" in part for part in parts):
            raise bad_path(join(parts), "a name with a newline cannot be handled")
        return "/".join((self.project, *parts))

    async def run(self, argv: list[str], data: bytes = b"", *, retry: bool = True) -> tuple[int, bytes, bytes]:
        """Run ``argv`` (``+name``: a script of ``file_channel.SCRIPTS``; ``data`` on its stdin) through the
        workspace's loop: (exit code, stdout, stderr). A request that may have run is retried only when ``retry``."""
        return await self._channels.call(self.workspace_id, self._open_channel, argv, data, retry=retry)

    async def _open_channel(self) -> HelperChannel:
        async def open_once() -> HelperChannel:
            pod, container = await self._target()
            return await open_channel(self._tasks(), self.conn, pod, container)

        return await self._channels.open_retried(open_once, (KubeError,), self.workspace_id)

    async def ensure(self) -> None:
        """The PVC (made by ``target``) and an empty project, checked once per runtime."""
        if self.workspace_id in self._ready:
            return
        code, _out, err = await self.run(["mkdir", "-p", "--", self.project])
        if code != 0:
            raise Conflict(f"the project directory could not be made: {message(err)}", code="storage_error")
        self._ready.add(self.workspace_id)

    async def lstat(self, parts: tuple[str, ...]) -> RemoteStat | None:
        """The entry itself, links not followed."""
        return (await self.snapshot([parts], -1))[0][parts]

    async def read(self, parts: tuple[str, ...], limit: int) -> bytes:
        """One regular file's bytes (at most ``limit`` + 1)."""
        code, out, err = await self.run(["+read", self.path(parts), str(limit + 1)])
        if code == 4:
            raise NotFound(f"{join(parts)!r} does not exist")
        if code == 3:
            raise bad_path(join(parts), "the file changed while it was read")
        if code != 0:
            raise Conflict(f"the file could not be read: {message(err)}", code="io_error")
        return out

    async def snapshot(
        self, paths: Sequence[tuple[str, ...]], content: int
    ) -> tuple[dict[tuple[str, ...], RemoteStat | None], dict[tuple[str, ...], bytes]]:
        """``stat`` of every path and the bytes of the small regular files among them, in one exec."""
        code, out, err = await self.run(["+snapshot", str(content), *map(self.path, paths)])
        return parse_snapshot(paths, code, out, err, self.path)

    @asynccontextmanager
    async def exclusive(self, *, deferred: bool = False) -> AsyncIterator[None]:
        """Hold the claim's lock directory (every hub process's mutations take turns; see ``file_channel`` for
        when a holder that died is overtaken). Always taken at once (``deferred`` is only allowed)."""
        lock = f"{self.home}/.codehub-lock"
        with anyio.move_on_after(LOCK_TIMEOUT) as waited:
            delay = 0.02
            while (await self.run(["+claimlock", lock, str(LOCK_STALE)]))[0] != 0:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
        if waited.cancelled_caught:
            raise Conflict("another hub process is changing this workspace's files; try again", code="storage_busy")
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.run(["+claimunlock", lock])
                except Conflict as exc:  # the pod is gone: its loop's lock is overtaken by the next one
                    log.warning("the lock of %s was not given back: %s", self.workspace_id, exc)

    async def listing(
        self, parts: tuple[str, ...], depth: int, *, include_git: bool, limit: int
    ) -> list[tuple[str, RemoteStat]]:
        """One ``find``: names NUL-separated on stdout, their stats line by line on stderr."""
        for _attempt in range(2):
            code, out, err = await self.run(["+list", self.path(parts), str(depth), "1" if include_git else "0"])
            found = parse_listing(code, out, err, parts)
            if found is not None:
                return found
        raise Conflict("the directory changed while it was listed; try again", code="io_error")

    async def commit(self, changes: Sequence[RemoteChange], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """One ``+batch`` request, as on a Docker volume (``DockerVolumeFiles.commit``): the new contents staged by
        one ``tar -x`` beside their targets, backups by hard link, one ``mv`` per directory, all or nothing."""
        if not changes and not new_dirs:
            return
        argv, payload = batch_request(self.project, changes, new_dirs, self.path, self.user)
        code, _out, err = await self.run(argv, payload, retry=False)
        if code != 0:
            raise Conflict(f"the change was not written: {message(err)}", code="io_error")

    async def remove(self, parts: tuple[str, ...], kind: NodeKind) -> None:
        """``rmdir`` or ``rm``."""
        argv = ["rmdir", "--", self.path(parts)] if kind == "dir" else ["rm", "-f", "--", self.path(parts)]
        code, _out, err = await self.run(argv, retry=False)
        if code != 0:
            raise failure(err, join(parts))

    async def move(self, source: tuple[str, ...], target: tuple[str, ...], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """``+move``: ``mkdir`` the new parents, then ``mv -T`` (the new parents removed again if it fails)."""
        deepest = [self.path(d) for d in sorted(new_dirs, key=len, reverse=True)]
        code, _out, err = await self.run(["+move", self.path(source), self.path(target), *deepest], retry=False)
        if code != 0:
            raise failure(err, join(target))

    async def upload(self, directory: Path) -> None:
        """Tar a local tree to a temporary file, then stream it into the project (never whole in memory)."""
        user = self.user
        tmp = await anyio.to_thread.run_sync(lambda: tar_tree(directory, user))
        try:
            size = (await anyio.Path(tmp).stat()).st_size
            pod, container = await self._target()
            argv = ["sh", "-c", UNTAR, "sh", str(size), self.project]
            code, _out, err = await pod_exec.run(self.conn, pod, argv, stdin=_chunks(tmp), container=container)
        finally:
            await anyio.Path(tmp).unlink()
        if code != 0:
            raise Conflict(f"the files were not written: {message(err)}", code="io_error")

    async def purge(self) -> None:
        """Delete the helper pod and the PVC (through the runtime)."""
        self._ready.discard(self.workspace_id)
        await self._channels.drop(self.workspace_id)
        await self._purge()


async def _chunks(path: str) -> AsyncIterator[bytes]:
    """A file's bytes, ``UPLOAD_CHUNK`` at a time."""
    handle = await anyio.open_file(path, "rb")
    try:
        while chunk := await handle.read(UPLOAD_CHUNK):
            yield chunk
    finally:
        await handle.aclose()
