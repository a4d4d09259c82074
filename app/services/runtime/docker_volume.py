"""The file primitives of the storage seam (``RemoteFiles``) on a workspace's Docker volume.

Every primitive is one request on the persistent channel to the volume's file helper (``docker_helper``,
``docker_channel``: about 1 ms a request instead of 40-100 ms an engine call): ``lstat`` and ``snapshot``
(``stat`` of many paths and a ``tar -c`` of the files among them, links never followed), ``read``
(``tar -c``), ``listing`` (``find``), ``commit`` (the new contents staged by ``tar -x`` from the request's
payload, then the renames, in one script), ``remove`` and ``move``; ``upload`` (a whole tree) uses the
archive API.

The images need no Python: every decision (paths, links, If-Match, patches) is made on the hub
(``app.services.files.remote_storage``); the helper only renames, removes and lists. Links swapped in by the
IDE between the hub's check and the engine's act resolve inside the helper, which sees this volume and a
read-only image, nothing of the engine's host or of other workspaces.
"""

from __future__ import annotations

import io
import os
import secrets
import tarfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from app.errors import Conflict, NotFound
from app.services.files.paths import bad_path, join
from app.services.files.remote import NodeKind, RemoteChange, RemoteStat
from app.services.runtime.docker_helper import LABEL_STORAGE, VolumeHelper, helper_name, volume_name
from app.services.runtime.docker_volume_support import (
    failure,
    message,
    parse_listing,
    parse_snapshot,
    tar_entries,
    tar_tree,
)


class DockerVolumeFiles(VolumeHelper):
    """``RemoteFiles`` on one workspace's volume, through its helper container on the volume's engine."""

    async def lstat(self, parts: tuple[str, ...]) -> RemoteStat | None:
        """The entry itself, links not followed (``stat`` in the helper)."""
        return (await self.snapshot([parts], -1))[0][parts]

    async def read(self, parts: tuple[str, ...], limit: int) -> bytes:
        """One regular file, by a ``tar`` of it in the helper (a link swapped in is archived, not followed)."""
        code, out, err = await self.run(["tar", "-cf", "-", "-C", "/", "--", self.path(parts).lstrip("/")])
        if code != 0 and b"No such file" in err:
            raise NotFound(f"{join(parts)!r} does not exist")
        with tarfile.open(fileobj=io.BytesIO(out)) as archive:
            member = archive.next()
            handle = archive.extractfile(member) if member is not None and member.isreg() else None
            if code != 0 or handle is None:
                raise bad_path(join(parts), "the file changed while it was read")
            return handle.read(limit + 1)

    async def snapshot(
        self, paths: Sequence[tuple[str, ...]], content: int
    ) -> tuple[dict[tuple[str, ...], RemoteStat | None], dict[tuple[str, ...], bytes]]:
        """One script in the helper: each path's kind and link target (NUL-separated), one ``stat`` of those that
        exist (a line each), then one ``tar`` of the regular files of at most ``content`` bytes (nothing is
        followed or recursed; ``content`` < 0: no bytes)."""
        code, out, err = await self.run(["+snapshot", str(content), *map(self.path, paths)])
        return parse_snapshot(paths, code, out, err, self.path)

    async def listing(
        self, parts: tuple[str, ...], depth: int, *, include_git: bool, limit: int
    ) -> list[tuple[str, RemoteStat]]:
        """One ``find`` in the helper: names NUL-separated on stdout, their stats line by line on stderr."""
        for _attempt in range(2):
            code, out, err = await self.run(["+list", self.path(parts), str(depth), "1" if include_git else "0"])
            found = parse_listing(code, out, err, parts)
            if found is not None:
                return found
        raise Conflict("the directory changed while it was listed; try again", code="io_error")

    async def commit(self, changes: Sequence[RemoteChange], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """Stage new contents next to their targets (one ``PUT``), then one script renames all or none."""
        staged: list[tuple[tuple[str, ...], bytes | None, int]] = [(d, None, 0o755) for d in new_dirs]
        argv = ["+commit", self.project, "1"]
        for change in sorted(changes, key=lambda c: c.data is not None):
            parent = change.parts[:-1]
            tmp = "-"
            if change.data is not None:
                temp = (*parent, f".codehub-{secrets.token_hex(8)}.tmp")
                staged.append((temp, change.data, change.mode))
                tmp = self.path(temp)
            argv += [tmp, self.path(change.parts), self.path((*parent, f".codehub-{secrets.token_hex(8)}.bak"))]
        payload = tar_entries(staged, self.user, prefix=()) if staged else b""
        argv[2] = "1" if staged else "0"
        code, _out, err = await self.run(argv, payload, retry=False)
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
        code, _out, err = await self.run(argv, retry=False)
        if code != 0:
            raise failure(err, join(parts))

    async def move(self, source: tuple[str, ...], target: tuple[str, ...], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """``mkdir`` the new parents, then ``mv -T`` in the helper."""
        script = 'src=$1; dst=$2; shift 2; for d; do mkdir -- "$d" || exit 1; done; exec mv -f -T -- "$src" "$dst"'
        argv = ["sh", "-c", script, "sh", self.path(source), self.path(target), *map(self.path, new_dirs)]
        code, _out, err = await self.run(argv, retry=False)
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


__all__ = ["LABEL_STORAGE", "DockerVolumeFiles", "helper_name", "volume_name"]
