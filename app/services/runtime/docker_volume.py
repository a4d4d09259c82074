"""A workspace's home as a Docker named volume, and the file primitives of the storage seam on it.

The volume ``codehub-home-<id>`` (labels ``codehub.workspace``, ``codehub.hub``) is mounted at the image's
home in the workspace container; the project is ``<home>/project``. File work runs on the volume's engine,
wherever it is, with no shared disk, through a small helper container ``codehub-files-<id>`` of the
workspace's image that mounts only that volume (no network, read-only root, every capability dropped, the
workspace user, ``sleep`` for a while and then exits; started again on demand):

- ``lstat``: ``HEAD /containers/{id}/archive`` (about 1 ms on a running helper);
- ``read``: ``GET …/archive`` of one file; ``upload`` and the staging of ``commit``: ``PUT …/archive``;
- ``listing``, ``remove``, ``move`` and the renames of ``commit``: one ``exec`` of the image's ``sh``.

The images need no Python: every decision (paths, links, If-Match, patches) is made on the hub
(``app.services.files.remote_storage``); the helper only renames, removes and lists. Links swapped in by the
IDE between the hub's check and the engine's act resolve inside the helper, which sees this volume and a
read-only image, nothing of the engine's host or of other workspaces.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError

from app import metrics
from app.errors import Conflict, NotFound
from app.services.files.paths import bad_path, join
from app.services.files.remote import NodeKind, RemoteChange, RemoteStat
from app.services.runtime.base import LABEL_HUB, LABEL_WORKSPACE
from app.services.runtime.docker_support import engine_errors
from app.services.runtime.docker_volume_support import (
    COMMIT_SCRIPT,
    LIST_SCRIPT,
    STAT_SCRIPT,
    failure,
    message,
    mode_kind,
    remote_stat,
    tar_entries,
    tar_tree,
)

log = logging.getLogger(__name__)
LABEL_STORAGE = "codehub.storage"
HELPER_LIFETIME = 900  # seconds a started helper lives; the next file operation starts it again
LIST_OUTPUT_LIMIT = 64 << 20


def volume_name(workspace_id: str) -> str:
    """The name of a workspace's home volume."""
    return f"codehub-home-{workspace_id}"


def helper_name(workspace_id: str) -> str:
    """The name of a workspace's file helper container."""
    return f"codehub-files-{workspace_id}"


class DockerVolumeFiles:
    """``RemoteFiles`` on one workspace's volume, through its helper container on the volume's engine."""

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
    ) -> None:
        self.docker, self.docker_url = docker, docker_url
        self.workspace_id, self.hub_id, self.image = workspace_id, hub_id, image
        self.home = home.rstrip("/") or "/"
        self.project = f"{self.home.rstrip('/')}/project"
        self.user = user
        self._ready = ready  # workspace ids whose volume, helper and project are known to exist (per runtime)

    def path(self, parts: tuple[str, ...]) -> str:
        """The absolute path of ``parts`` inside the helper (names with a newline are refused)."""
        if any("\n" in part for part in parts):
            raise bad_path(join(parts), "a name with a newline cannot be handled")
        return "/".join((self.project, *parts))

    # -- the volume and the helper ----------------------------------------------------------------------

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
        the volume at home (a created, never started container will do)."""
        if self.workspace_id in self._ready:
            return
        if await self._stat(container, self.project) is None:
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
        return {
            "Image": self.image,
            "Entrypoint": ["sleep"],
            "Cmd": [str(HELPER_LIFETIME)],
            "User": f"{self.user[0]}:{self.user[1]}",
            "WorkingDir": self.home,
            "Labels": {LABEL_HUB: self.hub_id, LABEL_STORAGE: self.workspace_id},
            "HostConfig": {
                "Mounts": [mount],
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
            except DockerError as exc:
                if exc.status != 404:
                    raise
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

    # -- primitives -------------------------------------------------------------------------------------

    async def lstat(self, parts: tuple[str, ...]) -> RemoteStat | None:
        """``HEAD …/archive``: the entry itself, links not followed."""
        return await self._stat(helper_name(self.workspace_id), self.path(parts))

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

    async def read(self, parts: tuple[str, ...], limit: int) -> bytes:
        """``GET …/archive`` of one regular file."""
        helper = self.docker.containers.container(helper_name(self.workspace_id))
        with engine_errors(self.docker_url):
            try:
                with metrics.docker_call("archive_get"):
                    archive = await helper.get_archive(self.path(parts))
            except DockerError as exc:
                if exc.status == 404:
                    raise NotFound(f"{join(parts)!r} does not exist") from exc
                raise
        with archive:
            member = archive.next()
            if member is None or not member.isreg():
                raise bad_path(join(parts), "the file changed while it was read")
            handle = archive.extractfile(member)
            assert handle is not None
            return handle.read(limit + 1)

    async def lstat_many(self, paths: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], RemoteStat | None]:
        """One script in the helper: each path's ``stat`` line (and link target), NUL-separated."""
        code, out, err = await self.run(["sh", "-c", STAT_SCRIPT, "sh", *map(self.path, paths)])
        fields = out.decode("utf-8", "surrogateescape").split("\0")
        if code != 0 or len(fields) < 2 * len(paths):
            raise Conflict(f"the files could not be examined: {message(err)}", code="io_error")
        found: dict[tuple[str, ...], RemoteStat | None] = {}
        for index, parts in enumerate(paths):
            line, target = fields[2 * index], fields[2 * index + 1]
            if line == "-":
                found[parts] = None
                continue
            mode_hex, size, mtime = line.split()
            mode = int(mode_hex, 16)
            found[parts] = RemoteStat(mode_kind(mode), int(size), mode & 0o7777, float(mtime), target)
        return found

    async def read_many(self, paths: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], bytes]:
        """One ``tar`` of the files in the helper (regular files only: nothing is followed or recursed)."""
        names = {self.path(parts).lstrip("/"): parts for parts in paths}
        code, out, err = await self.run(["tar", "-cf", "-", "-C", "/", "--", *names])
        if code != 0:
            raise Conflict(f"the files could not be read: {message(err)}", code="io_error")
        found: dict[tuple[str, ...], bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(out)) as archive:
            for member in archive:
                parts = names.get(member.name)
                handle = archive.extractfile(member) if member.isreg() else None
                if parts is not None and handle is not None:
                    found[parts] = handle.read()
        return found

    async def listing(
        self, parts: tuple[str, ...], depth: int, *, include_git: bool, limit: int
    ) -> list[tuple[str, RemoteStat]]:
        """One ``find`` in the helper: names NUL-separated on stdout, their stats line by line on stderr."""
        for _attempt in range(2):
            code, out, err = await self.run(
                ["sh", "-c", LIST_SCRIPT, "sh", self.path(parts), str(depth), "1" if include_git else "0"]
            )
            if code == 4:
                raise NotFound(f"{join(parts)!r} does not exist")
            names = [name.removeprefix("./") for name in out.decode("utf-8", "surrogateescape").split("\0") if name]
            stats = err.decode("ascii", "replace").splitlines()
            if len(names) == len(stats):
                break
        else:
            raise Conflict("the directory changed while it was listed; try again", code="io_error")
        found: list[tuple[str, RemoteStat]] = []
        for name, line in zip(names, stats, strict=True):
            mode_hex, size, mtime = line.split()
            mode = int(mode_hex, 16)
            found.append((name, RemoteStat(mode_kind(mode), int(size), mode & 0o7777, float(mtime))))
        return found

    async def commit(self, changes: Sequence[RemoteChange], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """Stage new contents next to their targets (one ``PUT``), then one script renames all or none."""
        staged: list[tuple[tuple[str, ...], bytes | None, int]] = [(d, None, 0o755) for d in new_dirs]
        argv = ["sh", "-c", COMMIT_SCRIPT, "sh", self.project]
        for change in sorted(changes, key=lambda c: c.data is not None):
            parent = change.parts[:-1]
            tmp = "-"
            if change.data is not None:
                temp = (*parent, f".codehub-{secrets.token_hex(8)}.tmp")
                staged.append((temp, change.data, change.mode))
                tmp = self.path(temp)
            argv += [tmp, self.path(change.parts), self.path((*parent, f".codehub-{secrets.token_hex(8)}.bak"))]
        if staged:
            await self._put(self.project, tar_entries(staged, self.user, prefix=()))
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
        """``rmdir`` or ``rm`` in the helper."""
        argv = ["rmdir", "--", self.path(parts)] if kind == "dir" else ["rm", "-f", "--", self.path(parts)]
        code, _out, err = await self.run(argv)
        if code != 0:
            raise failure(err, join(parts))

    async def move(self, source: tuple[str, ...], target: tuple[str, ...], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """``mkdir`` the new parents, then ``mv -T`` in the helper."""
        script = 'src=$1; dst=$2; shift 2; for d; do mkdir -- "$d" || exit 1; done; exec mv -f -T -- "$src" "$dst"'
        argv = ["sh", "-c", script, "sh", self.path(source), self.path(target), *map(self.path, new_dirs)]
        code, _out, err = await self.run(argv)
        if code != 0:
            await self._remove_dirs(new_dirs)
            raise failure(err, join(target))

    async def upload(self, directory: Path) -> None:
        """Tar a local tree (owned by the workspace user) and ``PUT`` it into the project."""
        user = self.user
        tmp = await anyio.to_thread.run_sync(lambda: tar_tree(directory, user))
        try:
            handle = await anyio.to_thread.run_sync(open, tmp, "rb")
            try:
                await self._put(self.project, handle)
            finally:
                handle.close()
        finally:
            os.unlink(tmp)

    # -- engine calls -----------------------------------------------------------------------------------

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

    async def run(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the helper as the workspace user: (exit code, stdout, stderr)."""
        for attempt in range(2):
            helper = await self._helper(start=attempt > 0)
            with engine_errors(self.docker_url):
                try:
                    with metrics.docker_call("exec"):
                        execution = await helper.exec(
                            argv, stdout=True, stderr=True, user=f"{self.user[0]}:{self.user[1]}"
                        )
                except DockerError as exc:
                    if exc.status == 409 and attempt == 0:
                        continue  # the helper's sleep ended: start it again
                    log.warning("file helper of %s did not run: %s", self.workspace_id, exc.message)
                    raise Conflict("the workspace's file helper did not run", code="storage_error") from exc
                out, err = bytearray(), bytearray()
                async with execution.start(detach=False) as stream:
                    while (message := await stream.read_out()) is not None:
                        target = out if message.stream == 1 else err
                        if len(target) < LIST_OUTPUT_LIMIT:
                            target += message.data
                with metrics.docker_call("exec_inspect"):
                    code = (await execution.inspect()).get("ExitCode")
            return int(code if code is not None else 1), bytes(out), bytes(err)
        raise Conflict("the file helper did not start", code="storage_error")


__all__ = ["LABEL_STORAGE", "DockerVolumeFiles", "helper_name", "volume_name"]
