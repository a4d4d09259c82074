"""A workspace's home volume on a Docker engine, its file helper container, and the channel to it.

The volume ``codehub-home-<id>`` (labels ``codehub.workspace``, ``codehub.hub``) is mounted at the image's
home in the workspace container; the project is ``<home>/project``. File work runs on the volume's engine,
wherever it is, with no shared disk, through a small helper container ``codehub-files-<id>`` of the
workspace's image that mounts only that volume (no network, read-only root, a private tmpfs, every
capability dropped, the workspace user). It exits by itself once no hub has had a channel open to it for
``HELPER_IDLE_EXIT`` seconds (its entrypoint counts the processes in it), and is started again on demand; a
helper made by an older hub (another ``codehub.helper`` version) is replaced.

Commands run in it through a persistent channel (``docker_channel``), reopened once when it breaks (a request
that may have run is retried only when it is safe to). ``exclusive`` holds the engine-side lock of the
channel's loop, shared by every hub process on this engine; deferred, it rides on the operation's own first
and last requests. The archive API serves only a created, never started container and whole-tree uploads.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError

from app import metrics
from app.errors import Conflict
from app.services.files.paths import bad_path, join
from app.services.files.remote import NodeKind, RemoteStat
from app.services.runtime.base import LABEL_HUB, LABEL_WORKSPACE
from app.services.runtime.docker_channel import (
    BUSY,
    PRIVATE_DIR,
    PRIVATE_DIR_SIZE,
    ChannelBroken,
    HelperChannel,
    HelperChannels,
)
from app.services.runtime.docker_support import engine_errors
from app.services.runtime.docker_volume_support import (
    BATCH_SCRIPT,
    LIST_SCRIPT,
    MANIFEST_SCRIPT,
    MOVE_SCRIPT,
    SNAPSHOT_SCRIPT,
    WRITE_SCRIPT,
    remote_stat,
    tar_entries,
)

log = logging.getLogger(__name__)
LABEL_STORAGE = "codehub.storage"
LABEL_HELPER = "codehub.helper"
HELPER_VERSION = "3"  # a helper of another version (another config) is replaced when next needed
HELPER_IDLE_EXIT = 900  # seconds a helper lives with no channel open; the next file operation starts it again
LOCK_TIMEOUT = 60.0  # seconds a mutation waits for another hub process's to end
SCRIPTS = {
    "write": WRITE_SCRIPT,
    "batch": BATCH_SCRIPT,
    "move": MOVE_SCRIPT,
    "snapshot": SNAPSHOT_SCRIPT,
    "list": LIST_SCRIPT,
    "manifest": MANIFEST_SCRIPT,
}
IDLE_EXIT = f"""n=0; while sleep 30; do set -- /proc/[0-9]*
if [ $# -gt 1 ]; then n=0; else n=$((n+30)); fi; [ $n -lt {HELPER_IDLE_EXIT} ] || exit 0; done"""


def volume_name(workspace_id: str) -> str:
    """The name of a workspace's home volume."""
    return f"codehub-home-{workspace_id}"


def helper_name(workspace_id: str) -> str:
    """The name of a workspace's file helper container."""
    return f"codehub-files-{workspace_id}"


class VolumeHelper:
    """One workspace's volume and its file helper on one engine (``DockerVolumeFiles`` adds the primitives)."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        docker_url: str,
        *,
        workspace_id: str,
        hub_id: str,
        image: str,
        home: str,
        user: tuple[int, int],
        ready: set[str],
        channels: HelperChannels,
    ) -> None:
        self.docker, self.docker_url = docker, docker_url
        self.workspace_id, self.hub_id, self.image = workspace_id, hub_id, image
        self.home = home.rstrip("/") or "/"
        self.project = f"{self.home.rstrip('/')}/project"
        self.user = user
        self._ready = ready  # workspace ids whose volume, helper and project are known to exist (per runtime)
        self._channels = channels

    def path(self, parts: tuple[str, ...]) -> str:
        """The absolute path of ``parts`` inside the helper (names with a newline are refused)."""
        if any("\n" in part for part in parts):
            raise bad_path(join(parts), "a name with a newline cannot be handled")
        return "/".join((self.project, *parts))

    async def ensure_volume(self) -> None:
        """Create the volume (labelled for this hub and workspace) unless it exists; refuse another hub's."""
        name = volume_name(self.workspace_id)
        labels = {LABEL_WORKSPACE: self.workspace_id, LABEL_HUB: self.hub_id}
        with engine_errors(self.docker_url), metrics.docker_call("volume_create"):
            body = json.dumps({"Name": name, "Labels": labels}).encode()
            info = await self.docker._query_json("volumes/create", method="POST", data=body)
            found = info.get("Labels") or {}
        if found.get(LABEL_HUB) != self.hub_id:
            raise Conflict(f"volume {name} belongs to another hub deployment", code="volume_taken")

    async def ensure_project(self, container: str) -> None:
        """Create the project directory (owned by the workspace user) through ``container``, which mounts
        the volume at home (a created, never started container will do).

        Put even when it exists: creating a container whose working directory is the project makes it,
        owned by root (Docker 20.10), and a directory entry over an existing directory only sets its owner."""
        if self.workspace_id in self._ready:
            return
        await self._put(self.home, tar_entries([(("project",), None, 0o755)], self.user, prefix=()), container)

    async def ensure(self) -> None:
        """Volume, helper and an empty project (owned by the workspace user), each made once."""
        if self.workspace_id in self._ready:
            return
        await self.ensure_volume()
        await self._helper(start=False)
        await self.ensure_project(helper_name(self.workspace_id))
        self._ready.add(self.workspace_id)

    def _helper_config(self, *, nocopy: bool = False) -> dict[str, Any]:
        mount: dict[str, Any] = {"Type": "volume", "Source": volume_name(self.workspace_id), "Target": self.home}
        if nocopy:  # a volume that is to receive a copy must not get the image's home first
            mount["VolumeOptions"] = {"NoCopy": True}
        uid, gid = self.user
        return {
            "Image": self.image,
            "Entrypoint": ["sh", "-c"],
            "Cmd": [IDLE_EXIT],
            "User": f"{self.user[0]}:{self.user[1]}",
            "WorkingDir": self.home,
            "Labels": {LABEL_HUB: self.hub_id, LABEL_STORAGE: self.workspace_id, LABEL_HELPER: HELPER_VERSION},
            "HostConfig": {
                "Mounts": [mount],
                "Tmpfs": {PRIVATE_DIR: f"rw,nosuid,nodev,noexec,size={PRIVATE_DIR_SIZE},mode=0700,uid={uid},gid={gid}"},
                "NetworkMode": "none",
                "ReadonlyRootfs": True,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges:true"],
                "PidsLimit": 64,
                "Memory": 128 << 20,
                "RestartPolicy": {"Name": "no"},
                "LogConfig": {"Type": "none"},
            },
        }

    async def volume_exists(self) -> bool:
        """True when the workspace's volume exists on this engine."""
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("volume_inspect"):
                    await self.docker._query_json(f"volumes/{volume_name(self.workspace_id)}")
            except DockerError as exc:
                if exc.status != 404:
                    raise
                return False
        return True

    async def helper(self, *, nocopy: bool = False) -> str:
        """The helper's name, created (not started) if missing; ``nocopy``: mount the volume without the
        image's home copied into it (a volume about to receive a copy)."""
        await self._helper(start=False, nocopy=nocopy)
        return helper_name(self.workspace_id)

    async def _helper(self, *, start: bool, nocopy: bool = False) -> Any:
        """The helper container (created if missing; started when ``start``)."""
        name = helper_name(self.workspace_id)
        container = self.docker.containers.container(name)
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("inspect"):
                    info = await container.show()
                if (info.get("Config") or {}).get("Labels", {}).get(LABEL_HELPER) != HELPER_VERSION:
                    with metrics.docker_call("remove"):
                        await container.delete(force=True)  # an older helper: made again with today's config
                    raise DockerError(404, "outdated helper replaced")
            except DockerError as exc:
                if exc.status != 404:
                    raise
                if not await self.volume_exists():  # moved or purged meanwhile: never recreate it empty here
                    self._ready.discard(self.workspace_id)
                    raise Conflict("the workspace's files are not on this engine", code="storage_gone") from exc
                try:
                    with metrics.docker_call("create"):
                        container = await self.docker.containers.create(self._helper_config(nocopy=nocopy), name=name)
                except DockerError as created:
                    if created.status != 409:
                        log.warning("file helper of %s not created: %s", self.workspace_id, created.message)
                        raise Conflict(
                            "the workspace's file helper could not be created", code="storage_error"
                        ) from created
                info = {"State": {}}
            if start and not info["State"].get("Running"):
                with metrics.docker_call("start"):
                    await container.start()
        return container

    async def purge(self) -> None:
        """Remove the helper and the volume (missing is fine)."""
        self._ready.discard(self.workspace_id)
        await self._channels.drop(self.workspace_id)
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("remove"):
                    await self.docker.containers.container(helper_name(self.workspace_id)).delete(force=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise
            try:
                with metrics.docker_call("volume_remove"):
                    async with self.docker._query(f"volumes/{volume_name(self.workspace_id)}", method="DELETE"):
                        pass
            except DockerError as exc:
                if exc.status != 404:
                    log.warning("volume of %s not removed: %s", self.workspace_id, exc.message)
                    raise Conflict("the workspace's volume is still in use", code="storage_busy") from exc

    async def _stat(self, container: str, path: str) -> RemoteStat | None:
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("archive_stat"):
                    async with self.docker._query(
                        f"containers/{container}/archive", method="HEAD", params={"path": path}
                    ) as response:
                        header = response.headers["X-Docker-Container-Path-Stat"]
                found = remote_stat(json.loads(base64.b64decode(header)))
            except ValueError:
                found = None  # an error answer to HEAD has no body: missing, or a link Docker cannot follow
            except DockerError as exc:
                if exc.status != 404:
                    raise
                found = None
        if found is not None and found.kind != "symlink":
            return found
        # Docker's stat reports a link's target resolved, and fails on loops: the link itself, from a tar of it
        return await self._entry(container, path)

    async def _entry(self, container: str, path: str) -> RemoteStat | None:
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("archive_get"):
                    archive = await self.docker.containers.container(container).get_archive(path)
            except DockerError as exc:
                if "too many links" in exc.message:  # a link loop: Docker cannot archive it, readlink can
                    return await self._read_link(path)
                return None
            except ValueError:
                return None
        with archive:
            member = archive.next()
        if member is None:
            return None
        kind: NodeKind = (
            "symlink" if member.issym() else "dir" if member.isdir() else "file" if member.isreg() else "other"
        )
        size = len(member.linkname.encode()) if member.issym() else member.size
        return RemoteStat(kind, size, member.mode & 0o7777, float(member.mtime), member.linkname)

    async def _read_link(self, path: str) -> RemoteStat | None:
        code, out, _err = await self.run(["readlink", "--", path])
        if code != 0:
            return None
        target = out.decode("utf-8", "surrogateescape").removesuffix("\n")
        return RemoteStat("symlink", len(target.encode("utf-8", "surrogateescape")), 0o777, 0.0, target)

    async def _put(self, path: str, data: Any, container: str = "") -> None:
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("archive_put"):
                    async with self.docker._query(
                        f"containers/{container or helper_name(self.workspace_id)}/archive",
                        method="PUT",
                        params={"path": path, "noOverwriteDirNonDir": "true"},
                        data=data,
                        headers={"Content-Type": "application/x-tar"},
                    ):
                        pass
            except DockerError as exc:
                log.warning("archive upload to %s failed: %s", self.workspace_id, exc.message)
                raise Conflict("the files were not written", code="io_error") from exc

    async def run(
        self, argv: list[str], data: bytes = b"", *, retry: bool = True, release: bool = False, sink: str = ""
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the helper as the workspace user (``+name``: a script of ``SCRIPTS``; ``data`` on its
        stdin, or written to the file ``sink``): (exit code, stdout, stderr); retried, if it may have run, only
        when ``retry``. In ``exclusive(deferred=True)`` the first request takes the engine-side lock (waiting
        while another hub process holds it) and ``release`` gives it back with this request."""
        hold = _HOLD.get()
        if hold is None or hold.key != (self.docker_url, self.workspace_id) or hold.state == "released":
            return await self._run(argv, data, retry=retry, lock="", sink=sink)
        lock = ("L" if hold.state == "wanted" else "") + ("U" if release else "")
        delay = 0.005
        with anyio.move_on_after(LOCK_TIMEOUT) as waited:
            while (found := await self._run(argv, data, retry=retry, lock=lock, sink=sink))[0] == BUSY and "L" in lock:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.2)
        if waited.cancelled_caught:
            raise Conflict("another hub process is changing this workspace's files; try again", code="storage_busy")
        hold.state = "released" if release else "held"
        return found

    async def _run(
        self, argv: list[str], data: bytes, *, retry: bool, lock: str, sink: str
    ) -> tuple[int, bytes, bytes]:
        return await self._channels.call(
            self.workspace_id, self._open_channel, argv, data, retry=retry, lock=lock, sink=sink
        )

    async def _open_channel(self) -> HelperChannel:
        """A new channel to the helper (created and started if need be)."""

        async def open_once() -> HelperChannel:
            await self._helper(start=True)
            with engine_errors(self.docker_url):
                return await HelperChannel.open(self.docker, helper_name(self.workspace_id), self.user, SCRIPTS)

        return await self._channels.open_retried(open_once, (DockerError,), self.workspace_id)

    @asynccontextmanager
    async def exclusive(self, *, deferred: bool = False) -> AsyncIterator[None]:
        """Hold the workspace's engine-side lock (every hub process's mutations of it take turns).

        ``deferred``: taken by the first request made inside (in this task), not by a request of its own, and
        given back by the request ``run(release=True)`` (the mutation that ends the operation)."""
        hold = _Hold((self.docker_url, self.workspace_id))
        token = _HOLD.set(hold)
        try:
            if not deferred:
                await self.run([":"])
            yield
        finally:
            _HOLD.reset(token)
            if hold.state == "held":
                with anyio.CancelScope(shield=True):
                    channel = await self._channels.get(self.workspace_id)
                    if channel is not None and not channel.closed and channel.holding:
                        try:
                            await channel.call(["unlock"])
                            channel.holding = False
                        except ChannelBroken:
                            await self._channels.drop(self.workspace_id)  # the loop gives its lock back as it ends


@dataclass(slots=True)
class _Hold:
    """This task's hold of one workspace's engine-side lock: ``wanted`` (not taken yet), ``held``, ``released``."""

    key: tuple[str, str]
    state: str = "wanted"


_HOLD: ContextVar[_Hold | None] = ContextVar("codehub_storage_hold", default=None)


__all__ = ["LABEL_STORAGE", "SCRIPTS", "VolumeHelper", "helper_name", "volume_name"]
