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
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import anyio

from app.errors import DomainError
from app.services.files.paths import MAX_SYMLINK_HOPS, join, link_target

NodeKind = Literal["file", "dir", "symlink", "other"]
INLINE_ENTRIES = 16  # a mirror in memory makes up to this many entries of at most INLINE_BYTES in all on the spot
INLINE_BYTES = 256 << 10


@dataclass(frozen=True, slots=True)
class RemoteStat:
    """What ``lstat`` says of one entry (links are not followed)."""

    kind: NodeKind
    size: int = 0
    mode: int = 0o644
    mtime: float = 0.0
    target: str = ""
    version: str = ""  # for a file that has not changed since before it was looked at: changes when it does


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


class ContentCache:
    """Bytes of remote files by their ``RemoteStat.version``, least recently used dropped past ``limit`` bytes
    (a patch's validate reads every file it touches; the apply that follows reads only what changed since)."""

    def __init__(self, limit: int = 64 << 20) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, tuple[str, ...]], tuple[str, bytes]] = OrderedDict()
        self._size = 0

    def get(self, key: tuple[str, tuple[str, ...]], version: str) -> bytes | None:
        """The bytes kept for ``key`` when they are of ``version``."""
        found = self._items.get(key)
        if not version or found is None or found[0] != version:
            return None
        self._items.move_to_end(key)
        return found[1]

    def has(self, key: tuple[str, tuple[str, ...]]) -> bool:
        """Bytes of some version are kept for ``key``."""
        return key in self._items

    def put(self, key: tuple[str, tuple[str, ...]], version: str, data: bytes) -> None:
        """Keep ``data`` as ``key``'s bytes of ``version`` (a file without a version is not kept)."""
        self.forget(key)
        if not version or len(data) > self.limit // 4:
            return
        self._items[key] = (version, data)
        self._size += len(data)
        while self._size > self.limit:
            self._size -= len(self._items.popitem(last=False)[1][1])

    def forget(self, key: tuple[str, tuple[str, ...]]) -> None:
        """Drop what is kept for ``key``."""
        if (found := self._items.pop(key, None)) is not None:
            self._size -= len(found[1])

    def drop(self, scope: str) -> None:
        """Drop everything kept for the workspace ``scope``."""
        for key in [key for key in self._items if key[0] == scope]:
            self.forget(key)


@dataclass(slots=True)
class Mirror:
    """The chains of a few paths of a remote project, materialized in the local directory ``root``."""

    files: RemoteFiles
    root: Path
    seen: dict[tuple[str, ...], RemoteStat | None] = field(default_factory=dict)
    fetched: set[tuple[str, ...]] = field(default_factory=set)
    cache: ContentCache | None = None
    scope: str = ""  # the workspace, in ``cache``
    in_memory: bool = False  # ``root`` is on a memory file system: a few small entries are made without a thread hop

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
        await self._make_entries([(self.local(parts), found, data, size)])
        return found

    async def prefetch(self, paths: Sequence[tuple[str, ...]], content: int, *, cached: bool = False) -> None:
        """Mirror many paths and all their parents in one ``snapshot`` (files with their bytes up to ``content``).

        Entries below a parent that is not a directory are left out, as ``chain`` would never reach them.
        ``cached``: bytes of an unchanged version come from ``cache`` (when it holds any of these files, the
        snapshot reads no bytes, and a second one reads those it does not hold); what is read is kept there."""
        wanted = sorted({p[:i] for p in paths for i in range(1, len(p) + 1)} - self.seen.keys(), key=len)
        if not wanted:
            return
        cache = self.cache if cached else None
        if cache is not None and any(cache.has((self.scope, p)) for p in wanted):
            found, read = await self.files.snapshot(wanted, -1)
            for parts in wanted:
                if (e := found[parts]) is not None and (data := cache.get((self.scope, parts), e.version)) is not None:
                    read[parts] = data
            missing = [
                p for p in wanted if (e := found[p]) and e.kind == "file" and e.size <= content and p not in read
            ]
            if missing:
                again, more = await self.files.snapshot(missing, content)
                found.update(again)
                read.update(more)
        else:
            found, read = await self.files.snapshot(wanted, content)
        if cache is not None:
            for parts, data in read.items():
                if (e := found.get(parts)) is not None and len(data) == e.size:
                    cache.put((self.scope, parts), e.version, data)
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
        await self._make_entries(todo)  # shallowest first

    async def _make_entries(self, todo: list[tuple[Path, RemoteStat, bytes | None, int]]) -> None:
        """Make ``todo``'s entries: in one thread hop, or on the spot when they are a few small ones in memory."""
        if self.in_memory and len(todo) <= INLINE_ENTRIES and sum(item[3] for item in todo) <= INLINE_BYTES:
            _materialize_all(todo)
        else:
            await anyio.to_thread.run_sync(_materialize_all, todo)

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


__all__ = ["ContentCache", "Mirror", "NodeKind", "RemoteChange", "RemoteFiles", "RemoteStat", "mode_kind"]
