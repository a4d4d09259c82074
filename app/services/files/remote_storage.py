"""``RemoteStorage``: the storage seam over ``RemoteFiles`` primitives, deciding on the hub, then writing.

Every operation mirrors what it needs (``remote.Mirror``) into a private temporary directory, runs the
project's own file code there (the same path checks, symlink policy, If-Match/ETag = sha256, patch
engine), and only then sends the outcome to the backend: one all-or-nothing ``commit`` for writes and
patches, ``remove`` or ``move`` for the rest. Mutations of one workspace are serialized by a lock the
backend's owner keeps per workspace (``locks``), as the local backend serializes them with ``flock``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.from_thread

from app.errors import BadRequest, PayloadTooLarge
from app.services.files import operations as ops
from app.services.files import patches
from app.services.files.operations import DeleteResult, Entry, MoveResult, RawFile, TextFile, Tree, WriteResult
from app.services.files.patches.apply import parsed
from app.services.files.paths import join, normalize
from app.services.files.remote import INLINE_ENTRIES, ContentCache, Mirror, RemoteChange, RemoteFiles, RemoteStat
from app.services.files.storage import BlockingFiles, Fill


class _Blocking:
    """Blocking reads through the async storage (for worker threads started by anyio)."""

    def __init__(self, storage: RemoteStorage) -> None:
        self.storage = storage

    def read_text(self, path: str, max_bytes: int) -> TextFile:
        return anyio.from_thread.run(lambda: self.storage.read_text(path, max_bytes=max_bytes))

    def list_dir(self, path: str, max_entries: int) -> Tree:
        return anyio.from_thread.run(
            lambda: self.storage.list_tree(path, 1, include_git=False, max_entries=max_entries)
        )


class RemoteStorage:
    """A workspace's files on a ``RemoteFiles`` backend, with the local backend's guarantees."""

    kind = "volume"

    def __init__(
        self, files: RemoteFiles, lock: anyio.Lock, *, cache: ContentCache | None = None, scope: str = ""
    ) -> None:
        self.files = files
        self.lock = lock
        self.cache, self.scope = cache, scope  # bytes of unchanged files, across operations (patches)

    @property
    def local_root(self) -> Path | None:
        """None: the files are not on the hub's disk."""
        return None

    @asynccontextmanager
    async def _mirror(self) -> AsyncIterator[Mirror]:
        await self.files.ensure()
        where = mirror_dir()
        if where is None:
            tmp = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="codehub-mirror-"))
        else:  # a directory in memory: a thread hop would cost more than the mkdir
            tmp = tempfile.mkdtemp(prefix="codehub-mirror-", dir=where)
        mirror = Mirror(self.files, Path(tmp), cache=self.cache, scope=self.scope, in_memory=where is not None)
        try:
            yield mirror
        finally:
            if where is not None and len(mirror.seen) <= INLINE_ENTRIES:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))

    async def ensure(self) -> None:
        """Create the storage and its empty project if missing."""
        await self.files.ensure()

    async def is_empty(self) -> bool:
        """True when the project has no entries."""
        await self.files.ensure()
        return not await self.files.listing((), 1, include_git=True, limit=1)

    async def list_tree(self, path: str, depth: int, *, include_git: bool, max_entries: int) -> Tree:
        """As ``operations.list_tree``: the start directory resolved on the hub, then one listing call."""
        if depth < 1:
            raise BadRequest("depth must be at least 1", code="bad_request")
        parts = normalize(path, allow_root=True)
        async with self._mirror() as mirror:
            resolved = await mirror.chain(parts) if parts else ()
            await anyio.to_thread.run_sync(lambda: ops.list_tree(mirror.root, path, 1, max_entries=1))
        found = await self.files.listing(resolved, depth, include_git=include_git, limit=max_entries + 1)
        return tree_of(parts, depth, found, max_entries)

    async def read_text(self, path: str, *, max_bytes: int) -> TextFile:
        """As ``operations.read_text``."""
        async with self._mirror() as mirror:
            await mirror.prefetch([normalize(path)], max_bytes)
            await mirror.chain(normalize(path), content=max_bytes)
            return await anyio.to_thread.run_sync(lambda: ops.read_text(mirror.root, path, max_bytes=max_bytes))

    async def read_raw(self, path: str, *, max_bytes: int) -> RawFile:
        """As ``operations.read_raw``."""
        async with self._mirror() as mirror:
            await mirror.prefetch([normalize(path)], max_bytes)
            await mirror.chain(normalize(path), content=max_bytes)
            return await anyio.to_thread.run_sync(lambda: ops.read_raw(mirror.root, path, max_bytes=max_bytes))

    async def write_file(
        self,
        path: str,
        data: bytes,
        *,
        if_match: str | Sequence[str] | None = None,
        if_none_match: bool = False,
        max_bytes: int = ops.DEFAULT_MAX_FILE_BYTES,
    ) -> WriteResult:
        """As ``operations.write_file``: decided on the mirror, then committed as one change."""
        parts = normalize(path)
        if len(data) > max_bytes:
            raise PayloadTooLarge(
                f"the content is larger than {max_bytes} bytes", code="file_too_large", limit=max_bytes
            )
        async with self.lock, self._mirror() as mirror, self.files.exclusive(deferred=True):
            await mirror.prefetch([parts], max_bytes)
            await mirror.chain(parts, content=max_bytes)

            def decide() -> tuple[WriteResult, int]:
                found = ops.write_file(
                    mirror.root,
                    path,
                    data,
                    if_match=if_match,
                    if_none_match=if_none_match,
                    max_bytes=max_bytes,
                    durable=False,
                )
                return found, os.lstat(mirror.local(normalize(found.path))).st_mode & 0o7777

            result, mode = await anyio.to_thread.run_sync(decide)
            written = normalize(result.path)
            await self.files.commit([RemoteChange(written, data, mode)], _new_dirs(mirror, [written]))
        return result

    async def delete_path(
        self, path: str, *, if_match: str | Sequence[str] | None = None, max_bytes: int = ops.DEFAULT_MAX_FILE_BYTES
    ) -> DeleteResult:
        """As ``operations.delete_path``."""
        parts = normalize(path)
        async with self.lock, self._mirror() as mirror, self.files.exclusive(deferred=True):
            resolved = await mirror.chain(parts, content=max_bytes, follow_last=False)
            found = mirror.seen.get(resolved)
            if found is not None and found.kind == "dir":
                await mirror.children(resolved)
            result = await anyio.to_thread.run_sync(
                lambda: ops.delete_path(mirror.root, path, if_match=if_match, max_bytes=max_bytes, durable=False)
            )
            await self.files.remove(normalize(result.path), result.type)
        return result

    async def move_path(self, source: str, target: str, *, overwrite: bool = False) -> MoveResult:
        """As ``operations.move_path``."""
        src, dst = normalize(source), normalize(target)
        async with self.lock, self._mirror() as mirror, self.files.exclusive(deferred=True):
            await mirror.chain(src, follow_last=False)
            resolved = await mirror.chain(dst, follow_last=False)
            found = mirror.seen.get(resolved)
            if found is not None and found.kind == "dir":
                await mirror.children(resolved)
            result = await anyio.to_thread.run_sync(
                lambda: ops.move_path(mirror.root, source, target, overwrite=overwrite, durable=False)
            )
            moved = normalize(result.to_path)
            await self.files.move(normalize(result.from_path), moved, _new_dirs(mirror, [moved]))
        return result

    async def _mirror_patch(self, mirror: Mirror, diff: str, limits: patches.PatchLimits, strip: int | None) -> None:
        touched: set[tuple[str, ...]] = set()
        for patch in parsed(diff, limits, strip)[0]:
            touched.update(p for p in (patch.old_parts, patch.new_parts) if p)
        await mirror.prefetch(sorted(touched), limits.max_file_bytes, cached=True)
        for parts in sorted(touched):
            await mirror.chain(parts, content=limits.max_file_bytes, follow_last=False)

    async def validate_patch(
        self, diff: str, *, limits: patches.PatchLimits, strip: int | None = None
    ) -> patches.ValidateResult:
        """As ``patches.validate``, on the mirror of every path the diff touches."""
        async with self._mirror() as mirror:
            await self._mirror_patch(mirror, diff, limits, strip)
            return await anyio.to_thread.run_sync(
                lambda: patches.validate(mirror.root, diff, limits=limits, strip=strip)
            )

    async def apply_patch(
        self,
        diff: str,
        base_hashes: dict[str, str] | None = None,
        *,
        limits: patches.PatchLimits,
        strip: int | None = None,
    ) -> patches.ApplyResult:
        """As ``patches.apply``: applied to the mirror, then every resulting change committed at once."""
        async with self.lock, self._mirror() as mirror, self.files.exclusive(deferred=True):
            await self._mirror_patch(mirror, diff, limits, strip)
            before = {parts: found for parts, found in mirror.seen.items() if found is not None}
            result = await anyio.to_thread.run_sync(
                lambda: patches.apply(mirror.root, diff, base_hashes, limits=limits, strip=strip, durable=False)
            )
            changes = await anyio.to_thread.run_sync(lambda: _changes(mirror, result, before))
            await self.files.commit(changes, _new_dirs(mirror, [c.parts for c in changes if c.data is not None]))
        return result

    async def populate(self, fill: Fill) -> None:
        """Run ``fill`` on a local temporary directory, then upload what it wrote."""
        await self.files.ensure()
        tmp = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="codehub-fill-"))
        try:
            await fill(Path(tmp))
            async with self.lock, self.files.exclusive():
                await self.files.upload(Path(tmp))
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))

    async def purge(self) -> None:
        """Delete the storage."""
        await self.files.purge()

    def blocking(self) -> BlockingFiles:
        """Blocking reads for worker threads started by anyio."""
        return _Blocking(self)


MEMORY_DIR = Path("/dev/shm")  # noqa: S108 (only ever a private mkdtemp inside it)
MEMORY_DIR_MIN_FREE = 1 << 30


def mirror_dir() -> str | None:
    """Where mirrors go: a memory file system when there is one with room (a mirror is scratch, and on a busy
    disk its creates and unlinks cost about a millisecond each), else the default temporary directory."""
    try:
        found = os.statvfs(MEMORY_DIR)
    except OSError:
        return None
    if found.f_bavail * found.f_frsize < MEMORY_DIR_MIN_FREE or not os.access(MEMORY_DIR, os.W_OK):
        return None
    return str(MEMORY_DIR)


def _new_dirs(mirror: Mirror, written: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Parents of ``written`` that the remote side does not have yet (shallowest first)."""
    existing = mirror.existing_dirs()
    missing = {parts[:i] for parts in written for i in range(1, len(parts))} - existing
    return sorted(missing, key=len)


def _changes(
    mirror: Mirror, result: patches.ApplyResult, before: dict[tuple[str, ...], RemoteStat]
) -> list[RemoteChange]:
    """What the applied patch changed in the mirror, as remote changes."""
    changes: list[RemoteChange] = []
    paths = {normalize(f.path) for f in result.files} | {normalize(f.old_path) for f in result.files if f.old_path}
    for parts in sorted(paths):
        local = mirror.local(parts)
        try:
            st = os.lstat(local)
        except FileNotFoundError:
            if parts in before:
                changes.append(RemoteChange(parts, None))
            continue
        if stat.S_ISREG(st.st_mode):
            changes.append(RemoteChange(parts, local.read_bytes(), st.st_mode & 0o7777))
    return changes


def tree_of(parts: tuple[str, ...], depth: int, found: list[tuple[str, RemoteStat]], max_entries: int) -> Tree:
    """A ``Tree`` as ``operations.list_tree`` builds it (breadth-first cut, directories first, depth-first order)."""
    prefix = join(parts) + "/" if parts else ""
    children: dict[str, list[tuple[str, RemoteStat]]] = {}
    for rel, st in found:
        parent, _, name = rel.rpartition("/")
        children.setdefault(parent, []).append((name, st))
    for items in children.values():
        items.sort(key=lambda item: (item[1].kind != "dir", item[0]))
    picked: dict[str, list[tuple[str, RemoteStat]]] = {}
    total, truncated = 0, False
    level = [""]
    for _ in range(depth):
        following: list[str] = []
        for directory in level:
            items = children.get(directory, [])
            if total + len(items) > max_entries:
                items, truncated = items[: max_entries - total], True
            picked[directory] = items
            total += len(items)
            following += [f"{directory}/{name}" if directory else name for name, st in items if st.kind == "dir"]
            if truncated:
                break
        if truncated or not following:
            break
        level = following
    entries: list[Entry] = []

    def walk(directory: str) -> None:
        for name, st in picked.get(directory, []):
            rel = f"{directory}/{name}" if directory else name
            size = 0 if st.kind == "dir" else st.size
            entries.append(Entry(name, prefix + rel, st.kind, size, st.mtime))
            if st.kind == "dir":
                walk(rel)

    walk("")
    return Tree(path=join(parts), depth=depth, entries=entries, truncated=truncated)


__all__ = ["RemoteStorage", "tree_of"]
