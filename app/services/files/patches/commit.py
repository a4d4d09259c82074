"""All-or-nothing writing of a set of file changes under a workspace root.

1. Stage: every new content is written to a temp file next to its target (parents created).
2. Flush the staged files (``fdatasync``-like ``fsync`` of each, several threads at once: sequential
   syncs cost ~1 ms each, and ``syncfs`` would wait for every other writer on a shared disk).
3. Commit, deletions first: keep each existing target as a backup (a hard link, or the entry renamed
   aside), then ``rename`` the staged file over it or leave it removed; then ``fsync`` the directories.
4. On any failure, undo in reverse: backups are renamed back, new files removed, temps and created
   directories removed, so the tree is exactly as before. On success the backups are dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.errors import Conflict, DomainError
from app.services.files.paths import Follow, Root, join, os_error, write_temp_open

_MAX_OPEN_DIRS = 256
_SYNC_THREADS = 16
_SYNC_BATCH = 128
_NO_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


@dataclass(slots=True)
class Change:
    """The final state of one path: new bytes and permissions, or ``None`` to remove it."""

    parts: tuple[str, ...]
    data: bytes | None
    perms: int = 0o644


@dataclass(slots=True)
class _Step:
    change: Change
    tmp: str | None = None
    backup: str | None = None
    backup_is_link: bool = False
    done: bool = False


class _Dirs:
    """Directory descriptors by path, opened without following links, closed at the end."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.fds: dict[tuple[str, ...], int] = {}
        self.created: list[tuple[str, ...]] = []

    def get(self, parts: tuple[str, ...], *, create: bool = False) -> int:
        fd = self.fds.get(parts)
        if fd is not None:
            return fd
        if len(self.fds) >= _MAX_OPEN_DIRS:
            self.close()
        fd = self.root.open_dir(parts, follow=Follow.NONE, create=create, created=self.created)
        self.fds[parts] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _name() -> str:
    return f".codehub-{os.urandom(8).hex()}.bak"


def commit(root: Root, changes: list[Change]) -> None:
    """Write ``changes`` so that either all of them or none are visible. Caller holds ``root.lock()``."""
    dirs = _Dirs(root)
    steps = [_Step(change) for change in changes]
    try:
        try:
            _stage(root, dirs, steps)
            for step in sorted(steps, key=lambda s: s.change.data is not None):
                _commit_one(dirs, step)
        except BaseException as exc:
            _rollback(dirs, steps)
            if isinstance(exc, OSError):
                raise os_error(exc, "the patched files") from None
            raise
        _finish(dirs, steps)
    finally:
        dirs.close()


def _stage(root: Root, dirs: _Dirs, steps: list[_Step]) -> None:
    pending: list[int] = []
    try:
        for step in steps:
            change = step.change
            if change.data is None:
                continue
            try:
                fd = dirs.get(change.parts[:-1], create=True)
                step.tmp, tmp_fd = write_temp_open(root, fd, change.data, change.perms)
            except OSError as exc:
                raise os_error(exc, join(change.parts)) from None
            pending.append(tmp_fd)
            if len(pending) >= _SYNC_BATCH:
                _sync_all(pending, os.fdatasync if root.durable else None)
        _sync_all(pending, os.fdatasync if root.durable else None)
    finally:
        for fd in pending:
            os.close(fd)


def _sync_all(fds: list[int], sync: Callable[[int], None] | None) -> None:
    """Sync several descriptors at once (sequential syncs cost about a millisecond each), then close them
    (``sync`` None: only close them)."""
    try:
        if sync is None:
            pass
        elif len(fds) == 1:
            sync(fds[0])
        elif fds:
            with ThreadPoolExecutor(max_workers=min(_SYNC_THREADS, len(fds))) as pool:
                list(pool.map(sync, fds))
    finally:
        for fd in fds:
            os.close(fd)
        fds.clear()


def _commit_one(dirs: _Dirs, step: _Step) -> None:
    change = step.change
    name = change.parts[-1]
    shown = join(change.parts)
    try:
        fd = dirs.get(change.parts[:-1], create=change.data is not None)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise Conflict(f"{shown!r} is a directory", code="is_directory")
        if st is not None:
            backup = _name()
            if change.data is not None:
                try:
                    os.link(name, backup, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                    step.backup, step.backup_is_link = backup, True
                except OSError as exc:
                    if exc.errno not in _NO_LINK:
                        raise
            if step.backup is None:
                os.rename(name, backup, src_dir_fd=fd, dst_dir_fd=fd)
                step.backup = backup
        if change.data is not None:
            assert step.tmp is not None
            os.rename(step.tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            step.tmp = None
        step.done = True
    except OSError as exc:
        raise os_error(exc, shown) from None


def _rollback(dirs: _Dirs, steps: list[_Step]) -> None:
    for step in reversed(steps):
        change = step.change
        name = change.parts[-1]
        with contextlib.suppress(OSError, DomainError):
            fd = dirs.get(change.parts[:-1])
            if step.backup is not None and step.backup_is_link and step.tmp is not None:
                os.unlink(step.backup, dir_fd=fd)  # the original was never replaced (rename of links is a no-op)
            elif step.backup is not None:
                os.rename(step.backup, name, src_dir_fd=fd, dst_dir_fd=fd)
            elif step.done and change.data is not None:
                os.unlink(name, dir_fd=fd)
            if step.tmp is not None:
                os.unlink(step.tmp, dir_fd=fd)
    for parts in reversed(dirs.created):
        with contextlib.suppress(OSError, DomainError):
            parent = dirs.get(parts[:-1])
            created_fd = dirs.fds.pop(parts, None)
            if created_fd is not None:
                os.close(created_fd)
            os.rmdir(parts[-1], dir_fd=parent)


def _finish(dirs: _Dirs, steps: list[_Step]) -> None:
    touched: set[tuple[str, ...]] = set()
    for step in steps:
        parent = step.change.parts[:-1]
        touched.add(parent)
        if step.backup is not None:
            with contextlib.suppress(OSError, DomainError):
                os.unlink(step.backup, dir_fd=dirs.get(parent))
    for step in steps:
        if step.change.data is None:
            _remove_empty_parents(dirs, step.change.parts[:-1])
    synced: list[int] = []
    with contextlib.suppress(OSError, DomainError):
        for parent in touched:
            synced.append(os.dup(dirs.get(parent)))
    with contextlib.suppress(OSError):
        _sync_all(synced, os.fsync if dirs.root.durable else None)


def _remove_empty_parents(dirs: _Dirs, parts: tuple[str, ...]) -> None:
    """Like git apply: directories a deletion left empty go too (never the root)."""
    while parts:
        try:
            parent = dirs.get(parts[:-1])
            os.rmdir(parts[-1], dir_fd=parent)
        except (OSError, DomainError):
            return
        fd = dirs.fds.pop(parts, None)
        if fd is not None:
            os.close(fd)
        parts = parts[:-1]
