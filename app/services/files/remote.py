"""Primitives of storage the hub cannot open directly (a volume on a Docker engine), and a mirror of what
an operation needs of it.

A backend provides ``RemoteFiles``: lstat, read, list, an all-or-nothing ``commit`` of new contents and
deletions, ``remove`` and ``move``. They take canonical component tuples whose parents the caller has seen
to be directories, never links. ``Mirror`` copies the chain of one path (every component; in-root link
targets followed as the files API follows them; file contents when asked) into a private directory on the
hub, where the project's own file code (``operations``, ``patches``) decides exactly as it does on a local
directory: same checks, same errors, same ETags. ``remote_storage`` then writes what that decided.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import anyio

from app.errors import DomainError
from app.services.files.paths import MAX_SYMLINK_HOPS, join, link_target

NodeKind = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True, slots=True)
class RemoteStat:
    """What ``lstat`` says of one entry (links are not followed)."""

    kind: NodeKind
    size: int = 0
    mode: int = 0o644
    mtime: float = 0.0
    target: str = ""


@dataclass(frozen=True, slots=True)
class RemoteChange:
    """The final state of one path: new bytes with permissions, or ``None`` to delete it."""

    parts: tuple[str, ...]
    data: bytes | None
    mode: int = 0o644


class RemoteFiles(Protocol):
    """The primitives a remote storage backend provides (paths are canonical component tuples)."""

    async def ensure(self) -> None:
        """Create the storage and an empty project if missing."""
        ...

    async def lstat(self, parts: tuple[str, ...]) -> RemoteStat | None:
        """The entry itself (None when missing); ``()`` is the project root."""
        ...

    async def read(self, parts: tuple[str, ...], limit: int) -> bytes:
        """A regular file's bytes (at most ``limit`` + 1 are read)."""
        ...

    async def snapshot(
        self, paths: Sequence[tuple[str, ...]], content: int
    ) -> tuple[dict[tuple[str, ...], RemoteStat | None], dict[tuple[str, ...], bytes]]:
        """``lstat`` of every path, and the bytes of those that are regular files of at most ``content`` bytes,
        in one call (a file that changes meanwhile may be left out of the bytes)."""
        ...

    async def listing(
        self, parts: tuple[str, ...], depth: int, *, include_git: bool, limit: int
    ) -> list[tuple[str, RemoteStat]]:
        """(relative path, stat) of entries below the directory ``parts`` down to ``depth`` levels."""
        ...

    async def commit(self, changes: Sequence[RemoteChange], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """Create ``new_dirs``, then apply every change or none (deletions first; as the local commit)."""
        ...

    async def remove(self, parts: tuple[str, ...], kind: NodeKind) -> None:
        """Delete one file, link or empty directory."""
        ...

    async def move(self, source: tuple[str, ...], target: tuple[str, ...], new_dirs: Sequence[tuple[str, ...]]) -> None:
        """Rename ``source`` to ``target`` (replacing a file, or an empty directory), creating ``new_dirs``."""
        ...

    async def upload(self, directory: Path) -> None:
        """Copy a local tree into the (empty) project."""
        ...

    def exclusive(self, *, deferred: bool = False) -> AbstractAsyncContextManager[None]:
        """Hold the storage's own lock, shared by every hub process (a mutation: from its first read to its write).

        ``deferred``: the backend may take it with the first primitive called inside instead of at once, and
        give it back with the ``commit``, ``remove`` or ``move`` that ends the block (nothing follows those)."""
        ...

    async def purge(self) -> None:
        """Delete the storage and everything in it."""
        ...


@dataclass(slots=True)
class Mirror:
    """The chains of a few paths of a remote project, materialized in the local directory ``root``."""

    files: RemoteFiles
    root: Path
    seen: dict[tuple[str, ...], RemoteStat | None] = field(default_factory=dict)
    fetched: set[tuple[str, ...]] = field(default_factory=set)

    def local(self, parts: tuple[str, ...]) -> Path:
        """Where ``parts`` is in the mirror."""
        return self.root.joinpath(*parts)

    async def chain(
        self, parts: tuple[str, ...], *, content: int | None = None, follow_last: bool = True
    ) -> tuple[str, ...]:
        """Mirror every component of ``parts`` (and of in-root link targets met on the way).

        ``content``: fetch the final regular file's bytes up to that size (a larger one is mirrored as a
        sparse file of its size, enough for the size checks). Returns the resolved path of the last entry.
        """
        pending = parts
        for _hop in range(MAX_SYMLINK_HOPS + 1):
            for i in range(1, len(pending) + 1):
                prefix = pending[:i]
                last = i == len(pending)
                found = await self.node(prefix, content if last else None)
                if found is None or (found.kind not in ("dir", "symlink") and not last):
                    return pending
                if found.kind == "symlink" and (follow_last or not last):
                    try:
                        resolved = link_target(prefix[:-1], found.target, join(parts))
                    except DomainError:
                        return pending
                    pending = resolved + pending[i:]
                    break
            else:
                return pending
        return pending

    async def node(self, parts: tuple[str, ...], content: int | None = None) -> RemoteStat | None:
        """Mirror one entry whose parents are mirrored directories."""
        if parts in self.seen:
            found = self.seen[parts]
            if found is None or found.kind != "file" or content is None or parts in self.fetched:
                return found
        else:
            found = await self.files.lstat(parts)
            self.seen[parts] = found
            if found is None:
                return None
        data = None
        if found.kind == "file" and content is not None and found.size <= content:
            data = await self.files.read(parts, content)
            self.fetched.add(parts)
        # a file not fetched is only ever sized: up to one byte past the limit is all a size check needs
        size = min(found.size, (content or 0) + 1)
        await anyio.to_thread.run_sync(_materialize, self.local(parts), found, data, size)
        return found

    async def prefetch(self, paths: Sequence[tuple[str, ...]], content: int) -> None:
        """Mirror many paths and all their parents in one ``snapshot`` (files with their bytes up to ``content``).

        Entries below a parent that is not a directory are left out, as ``chain`` would never reach them."""
        wanted = sorted({p[:i] for p in paths for i in range(1, len(p) + 1)} - self.seen.keys(), key=len)
        if not wanted:
            return
        found, read = await self.files.snapshot(wanted, content)
        reached: list[tuple[str, ...]] = []
        for parts in wanted:  # shallowest first: a parent is decided before its children
            parent = self.seen.get(parts[:-1]) if parts[:-1] else RemoteStat("dir")
            if parent is None:
                self.seen[parts] = None
            elif parent.kind == "dir":  # below a link or a file ``chain`` never asks, so neither does this
                self.seen[parts] = found.get(parts)
                reached.append(parts)
        files = [p for p in reached if (e := self.seen[p]) is not None and e.kind == "file" and e.size <= content]
        datas = {p: read[p] for p in files if p in read and len(read[p]) == self.seen[p].size}  # type: ignore[union-attr]
        self.fetched.update(datas)
        todo = [(self.local(p), e, datas.get(p), min(e.size, content + 1)) for p in reached if (e := self.seen[p])]
        await anyio.to_thread.run_sync(_materialize_all, todo)  # one hop for them all, shallowest first

    async def children(self, parts: tuple[str, ...]) -> None:
        """Mirror whether a directory is empty (one placeholder entry when it is not)."""
        if await self.files.listing(parts, 1, include_git=True, limit=1):
            await anyio.to_thread.run_sync(lambda: (self.local(parts) / ".codehub-not-empty").touch())

    def existing_dirs(self) -> set[tuple[str, ...]]:
        """Directories that exist remotely (seen as such)."""
        return {parts for parts, found in self.seen.items() if found is not None and found.kind == "dir"} | {()}


def _materialize_all(todo: list[tuple[Path, RemoteStat, bytes | None, int]]) -> None:
    for item in todo:
        _materialize(*item)


def _materialize(path: Path, found: RemoteStat, data: bytes | None, size: int) -> None:
    """Create ``path`` as the kind of entry ``found`` is (contents when given, else a sparse file of ``size``)."""
    if found.kind == "dir":
        path.mkdir(exist_ok=True)
        return
    if os.path.lexists(path):
        if found.kind != "file" or data is None:
            return
        path.unlink()
    if found.kind == "symlink":
        os.symlink(found.target, path)  # never followed: the file code resolves links lexically, in-root only
        return
    if found.kind == "other":
        os.mkfifo(path, 0o600)
        return
    with open(path, "wb") as fh:
        if data is not None:
            fh.write(data)
        else:
            fh.truncate(size)
    os.chmod(path, found.mode & 0o7777)
    os.utime(path, (found.mtime, found.mtime))


def mode_kind(mode: int) -> NodeKind:
    """The entry kind of a POSIX ``st_mode``."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


__all__ = ["Mirror", "NodeKind", "RemoteChange", "RemoteFiles", "RemoteStat", "mode_kind"]
