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
    batch_request,
    failure,
    message,
    parse_listing,
    parse_snapshot,
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
        with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as archive:
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
        """One request. A single new content in an existing directory: its bytes written by the channel beside
        the target, then ``+write`` renames them over it. Anything else, ``+batch``: the new contents (and new
        directories) staged by one ``tar -x`` in a directory beside their targets, existing targets
        hard-linked into a backup directory, one ``rm`` of the deletions and one ``mv`` per directory, all
        undone on the first failure. On success the staging and backup directories are removed by one ``rm -rf``:
        after the answer (the channel's loop, before it reads the next request) when nothing was deleted, else
        before it (the directories a deletion emptied are removed once their backups are gone)."""
        if not changes and not new_dirs:
            return
        if len(changes) == 1 and (data := changes[0].data) is not None and not new_dirs:
            change = changes[0]
            tmp = self.path((*change.parts[:-1], f".codehub-{secrets.token_hex(8)}.tmp"))
            argv = ["+write", tmp, self.path(change.parts), format(change.mode & 0o7777, "o")]
            code, _out, err = await self.run(argv, data, retry=False, release=True, sink=tmp)
        else:
            argv, payload = batch_request(self.project, changes, new_dirs, self.path, self.user)
            code, _out, err = await self.run(argv, payload, retry=False, release=True)
        if code != 0:
            raise Conflict(f"the change was not written: {message(err)}", code="io_error")

    async def remove(self, parts: tuple[str, ...], kind: NodeKind) -> None:
        """``rmdir`` or ``rm`` in the helper."""
        argv = ["rmdir", "--", self.path(parts)] if kind == "dir" else ["rm", "-f", "--", self.path(parts)]
        code, _out, err = await self.run(argv, retry=False, release=True)
        if code != 0:
            raise failure(err, join(parts))

    async def move(self, source: tuple[str, ...], target: tuple[str, ...], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """``+move``: ``mkdir`` the new parents, then ``mv -T`` (the new parents removed again if it fails)."""
        deepest = [self.path(d) for d in sorted(new_dirs, key=len, reverse=True)]
        code, _out, err = await self.run(
            ["+move", self.path(source), self.path(target), *deepest], retry=False, release=True
        )
        if code != 0:
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
