"""The storage seam on a workspace's PVC: every primitive is one ``pods/exec`` of the image's ``sh``.

The command runs in the workspace pod while it runs (the IDE's own view of the files), else in a short-lived
helper pod ``codehub-files-<id>`` of the workspace image that mounts only the PVC (read-only root, no
capabilities, the workspace user, gone after ``HELPER_LIFETIME`` seconds or when the workspace starts). The
scripts are the Docker volume's (``docker_volume_support``); content travels as a tar on stdin, read with
``head -c N`` since the channel protocol cannot close stdin. Every decision (paths, links, If-Match, patches)
is made on the hub by ``RemoteStorage``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from app.errors import Conflict, NotFound
from app.services.files.paths import bad_path, join
from app.services.files.remote import NodeKind, RemoteChange, RemoteStat
from app.services.runtime.docker_volume_support import (
    COMMIT_SCRIPT,
    LIST_SCRIPT,
    SNAPSHOT_SCRIPT,
    failure,
    message,
    parse_listing,
    parse_snapshot,
    tar_entries,
    tar_tree,
)
from app.services.runtime.kubernetes import manifests, pod_exec, states
from app.services.runtime.kubernetes.connection import KubeConnection, KubeError
from app.services.runtime.kubernetes.manifests import FILES_CONTAINER

# the runtime (``KubernetesRuntime``) is passed in untyped: importing it here would make an import cycle
KubernetesRuntime = Any

UNTAR = 'n=$1; cd -- "$2" || exit 4; head -c "$n" | tar -x -f - -o'
READ = '[ -f "$1" ] && [ ! -L "$1" ] || { [ -e "$1" ] || [ -L "$1" ] || exit 4; exit 3; }; exec head -c "$2" -- "$1"'
Target = Callable[[], Awaitable[tuple[str, str]]]
"""The (pod, container) to run file commands in, made ready on demand."""
TRYLOCK = (
    'l=$1; now=$(date +%s); if mkdir -- "$l" 2>/dev/null; then echo "$now" > "$l/at"; exit 0; fi; '
    'at=$(cat -- "$l/at" 2>/dev/null || echo "$now"); [ $((now - at)) -gt "$2" ] || exit 1; echo "$now" > "$l/at"'
)
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
    ) -> None:
        self.conn, self.workspace_id = conn, workspace_id
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

    async def run(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the target pod: (exit code, stdout, stderr)."""
        pod, container = await self._target()
        return await pod_exec.run(self.conn, pod, argv, stdin=stdin, container=container)

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
        code, out, err = await self.run(["sh", "-c", READ, "sh", self.path(parts), str(limit + 1)])
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
        code, out, err = await self.run(["sh", "-c", SNAPSHOT_SCRIPT, "sh", str(content), *map(self.path, paths)])
        return parse_snapshot(paths, code, out, err, self.path)

    @asynccontextmanager
    async def exclusive(self, *, deferred: bool = False) -> AsyncIterator[None]:
        """Hold the claim's lock directory (every hub process's mutations take turns; a holder that died is
        overtaken after ``LOCK_STALE`` seconds). Always taken at once (``deferred`` is only allowed)."""
        lock = f"{self.home}/.codehub-lock"
        with anyio.move_on_after(LOCK_TIMEOUT) as waited:
            delay = 0.02
            while (await self.run(["sh", "-c", TRYLOCK, "sh", lock, str(LOCK_STALE)]))[0] != 0:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
        if waited.cancelled_caught:
            raise Conflict("another hub process is changing this workspace's files; try again", code="storage_busy")
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.run(["rm", "-rf", "--", lock])

    async def listing(
        self, parts: tuple[str, ...], depth: int, *, include_git: bool, limit: int
    ) -> list[tuple[str, RemoteStat]]:
        """One ``find``: names NUL-separated on stdout, their stats line by line on stderr."""
        for _attempt in range(2):
            code, out, err = await self.run(
                ["sh", "-c", LIST_SCRIPT, "sh", self.path(parts), str(depth), "1" if include_git else "0"]
            )
            found = parse_listing(code, out, err, parts)
            if found is not None:
                return found
        raise Conflict("the directory changed while it was listed; try again", code="io_error")

    async def _untar(self, data: bytes) -> None:
        code, _out, err = await self.run(["sh", "-c", UNTAR, "sh", str(len(data)), self.project], stdin=data)
        if code != 0:
            raise Conflict(f"the files were not written: {message(err)}", code="io_error")

    async def commit(self, changes: Sequence[RemoteChange], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """Stage new contents next to their targets (one tar), then one script renames all or none."""
        staged: list[tuple[tuple[str, ...], bytes | None, int]] = [(d, None, 0o755) for d in new_dirs]
        argv = ["sh", "-c", COMMIT_SCRIPT, "sh", self.project, "0"]
        for change in sorted(changes, key=lambda c: c.data is not None):
            parent = change.parts[:-1]
            tmp = "-"
            if change.data is not None:
                temp = (*parent, f".codehub-{secrets.token_hex(8)}.tmp")
                staged.append((temp, change.data, change.mode))
                tmp = self.path(temp)
            argv += [tmp, self.path(change.parts), self.path((*parent, f".codehub-{secrets.token_hex(8)}.bak"))]
        if staged:  # staged apart: the channel protocol cannot end stdin, so the script's own tar would wait
            await self._untar(tar_entries(staged, self.user, prefix=()))
        code, _out, err = await self.run(argv)
        if code != 0:
            await self._remove_dirs(new_dirs)
            raise Conflict(f"the change was not written: {message(err)}", code="io_error")

    async def _remove_dirs(self, dirs: Sequence[tuple[str, ...]]) -> None:
        if dirs:
            await self.run(
                ["sh", "-c", 'for d; do rmdir -- "$d"; done 2>/dev/null; true', "sh"]
                + [self.path(d) for d in sorted(dirs, key=len, reverse=True)]
            )

    async def remove(self, parts: tuple[str, ...], kind: NodeKind) -> None:
        """``rmdir`` or ``rm``."""
        argv = ["rmdir", "--", self.path(parts)] if kind == "dir" else ["rm", "-f", "--", self.path(parts)]
        code, _out, err = await self.run(argv)
        if code != 0:
            raise failure(err, join(parts))

    async def move(self, source: tuple[str, ...], target: tuple[str, ...], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """``mkdir`` the new parents, then ``mv -T``."""
        script = 'src=$1; dst=$2; shift 2; for d; do mkdir -- "$d" || exit 1; done; exec mv -f -T -- "$src" "$dst"'
        argv = ["sh", "-c", script, "sh", self.path(source), self.path(target), *map(self.path, new_dirs)]
        code, _out, err = await self.run(argv)
        if code != 0:
            await self._remove_dirs(new_dirs)
            raise failure(err, join(target))

    async def upload(self, directory: Path) -> None:
        """Tar a local tree and unpack it into the project."""
        user = self.user
        tmp = await anyio.to_thread.run_sync(lambda: tar_tree(directory, user))
        try:
            data = await anyio.Path(tmp).read_bytes()
        finally:
            await anyio.Path(tmp).unlink()
        await self._untar(data)

    async def purge(self) -> None:
        """Delete the helper pod and the PVC (through the runtime)."""
        self._ready.discard(self.workspace_id)
        await self._purge()
