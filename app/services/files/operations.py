"""File operations on a workspace directory: tree listing, text/raw reads, atomic writes, delete, move.

All paths go through ``app.services.files.paths`` (see its docstring for the symlink policy). Functions are
synchronous and blocking; controllers run them in a worker thread. Mutations hold the workspace lock.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from typing import Literal

import msgspec

from app.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, PreconditionFailed, UnsupportedMediaType
from app.services.files.paths import (
    Follow,
    Resolved,
    Root,
    bad_path,
    check_regular,
    join,
    normalize,
    os_error,
    read_fd,
    umask,
    write_temp,
)

EntryType = Literal["file", "dir", "symlink", "other"]
DEFAULT_MAX_FILE_BYTES = 10_485_760
DEFAULT_MAX_TREE_ENTRIES = 10_000


class Entry(msgspec.Struct, frozen=True):
    """One tree entry; ``size`` is 0 for directories, the link length for symlinks."""

    name: str
    path: str
    type: EntryType
    size: int
    mtime: float


class Tree(msgspec.Struct, frozen=True):
    """A listing below ``path``: directories first, then names, in display (depth-first) order."""

    path: str
    depth: int
    entries: list[Entry]
    truncated: bool


class TextFile(msgspec.Struct, frozen=True):
    """A UTF-8 text file and the sha256 of its bytes."""

    path: str
    content: str
    sha256: str
    size: int
    mtime: float


class RawFile(msgspec.Struct, frozen=True):
    """A file's bytes and their sha256."""

    path: str
    data: bytes
    sha256: str
    size: int
    mtime: float


class WriteResult(msgspec.Struct, frozen=True):
    """What a write left on disk; ``previous_sha256`` is None for a new file."""

    path: str
    sha256: str
    size: int
    created: bool
    previous_sha256: str | None = None


class DeleteResult(msgspec.Struct, frozen=True):
    """What a delete removed (``sha256``/``size`` of a removed regular file within the read limit)."""

    path: str
    type: EntryType
    sha256: str | None = None
    size: int | None = None


class MoveResult(msgspec.Struct, frozen=True):
    """A completed move."""

    from_path: str = msgspec.field(name="from")
    to_path: str = msgspec.field(name="to")
    type: EntryType = "file"


_KINDS: dict[int, EntryType] = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}


def _entry_type(mode: int) -> EntryType:
    return _KINDS.get(stat.S_IFMT(mode), "other")


class _Listing:
    """Entries gathered breadth-first, emitted depth-first (each directory: subdirectories, then files)."""

    def __init__(self, max_entries: int, include_git: bool) -> None:
        self.max_entries = max_entries
        self.include_git = include_git
        self.entries: list[Entry] = []
        self.children: dict[int, list[int]] = {-1: []}
        self.truncated = False

    def scan(self, fd: int, dir_parts: tuple[str, ...], parent: int, descend: bool) -> list[tuple[str, ...]]:
        """Add one directory's entries; return the subdirectories to list next (as parts)."""
        prefix = "/".join(dir_parts) + "/" if dir_parts else ""
        dirs: list[tuple[str, os.stat_result]] = []
        others: list[tuple[str, os.stat_result]] = []
        with os.scandir(fd) as it:
            for dirent in it:
                name = dirent.name
                if name == ".git" and not self.include_git:
                    continue
                try:
                    st = dirent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                (dirs if stat.S_ISDIR(st.st_mode) else others).append((name, st))
        dirs.sort(key=_first)
        others.sort(key=_first)
        siblings = self.children.setdefault(parent, [])
        entries = self.entries
        room = self.max_entries - len(entries)
        if len(dirs) + len(others) > room:
            self.truncated = True
            dirs, others = dirs[:room], others[: max(room - len(dirs), 0)]
        below: list[tuple[str, ...]] = []
        for name, st in dirs:
            siblings.append(len(entries))
            entries.append(Entry(name, prefix + name, "dir", 0, st.st_mtime))
            if descend:
                below.append((*dir_parts, name))
        for name, st in others:
            siblings.append(len(entries))
            entries.append(Entry(name, prefix + name, _entry_type(st.st_mode), st.st_size, st.st_mtime))
        return below

    def ordered(self) -> list[Entry]:
        """Depth-first order."""
        out: list[Entry] = []
        stack = list(reversed(self.children[-1]))
        children = self.children
        while stack:
            index = stack.pop()
            out.append(self.entries[index])
            kids = children.get(index)
            if kids:
                stack.extend(reversed(kids))
        return out


def _first(item: tuple[str, os.stat_result]) -> str:
    return item[0]


def list_tree(
    root_dir: str | os.PathLike[str],
    path: str = "",
    depth: int = 1,
    *,
    include_git: bool = False,
    max_entries: int = DEFAULT_MAX_TREE_ENTRIES,
) -> Tree:
    """List entries below ``path`` down to ``depth`` levels, breadth-first up to ``max_entries``.

    Links are listed, never followed (the start directory may be an in-root link). ``.git`` is hidden
    unless ``include_git``. The cut keeps the shallowest entries; ``truncated`` says one happened.
    One ``lstat`` per entry (from ``scandir``) and one ``openat`` per listed directory.
    """
    if depth < 1:
        raise BadRequest("depth must be at least 1", code="bad_request")
    parts = normalize(path, allow_root=True)
    listing = _Listing(max_entries, include_git)
    with Root(root_dir) as root:
        level: list[tuple[tuple[str, ...], int]] = [(parts, -1)]
        fd: int | None = root.open_dir(parts)
        for current in range(1, depth + 1):
            following: list[tuple[tuple[str, ...], int]] = []
            for dir_parts, parent in level:
                if listing.truncated:
                    break
                if fd is None:
                    fd = _reopen(root, dir_parts)
                    if fd is None:
                        continue
                first = len(listing.entries)
                try:
                    below = listing.scan(fd, dir_parts, parent, descend=current < depth)
                finally:
                    os.close(fd)
                    fd = None
                following.extend((sub, first + k) for k, sub in enumerate(below))
            if listing.truncated or not following:
                break
            level = following
    return Tree(path=join(parts), depth=depth, entries=listing.ordered(), truncated=listing.truncated)


def _reopen(root: Root, parts: tuple[str, ...]) -> int | None:
    """Open a directory met during a listing, following no links; None when it vanished or changed."""
    try:
        return root.open_dir(parts, follow=Follow.NONE)
    except (NotFound, BadRequest, Conflict):
        return None


def _read(root_dir: str | os.PathLike[str], path: str, max_bytes: int) -> tuple[str, bytes, os.stat_result]:
    parts = normalize(path)
    with Root(root_dir) as root, root.resolve(parts, follow=Follow.ALL) as res:
        fd, st = root.open_regular(res)
        try:
            data = read_fd(fd, max_bytes, res.path, st.st_size)
        finally:
            os.close(fd)
        return res.path, data, st


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's content may have: device, inode, size, mtime and ctime (ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stat_regular(root_dir: str | os.PathLike[str], path: str) -> tuple[str, os.stat_result]:
    """Canonical path and stat of a regular file, resolved as ``read_text`` does (same errors), not read."""
    parts = normalize(path)
    with Root(root_dir) as root, root.resolve(parts, follow=Follow.ALL) as res:
        fd, st = root.open_regular(res)
        os.close(fd)
        return res.path, st


def read_text(root_dir: str | os.PathLike[str], path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> TextFile:
    """Read a UTF-8 text file: 415 ``binary_file`` for NUL bytes or invalid UTF-8, 413 over ``max_bytes``."""
    return read_text_stat(root_dir, path, max_bytes=max_bytes)[0]


def read_text_stat(
    root_dir: str | os.PathLike[str], path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> tuple[TextFile, os.stat_result]:
    """``read_text`` plus the stat of the very file read (for caches keyed by ``file_identity``)."""
    canonical, data, st = _read(root_dir, path, max_bytes)
    if b"\x00" in data:
        raise UnsupportedMediaType(f"{canonical!r} is binary; use raw=true", code="binary_file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedMediaType(f"{canonical!r} is not UTF-8 text; use raw=true", code="binary_file") from None
    return TextFile(canonical, text, hashlib.sha256(data).hexdigest(), len(data), st.st_mtime), st


def read_raw(root_dir: str | os.PathLike[str], path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> RawFile:
    """Read a file's bytes (413 over ``max_bytes``)."""
    canonical, data, st = _read(root_dir, path, max_bytes)
    return RawFile(canonical, data, hashlib.sha256(data).hexdigest(), len(data), st.st_mtime)


def _current_sha(root: Root, res: Resolved) -> str:
    fd, _st = root.open_regular(res)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def write_file(
    root_dir: str | os.PathLike[str],
    path: str,
    data: bytes,
    *,
    if_match: str | Sequence[str] | None = None,
    if_none_match: bool = False,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    durable: bool = True,
) -> WriteResult:
    """Atomically write ``data`` (temp file in the same directory, fsync, rename, fsync the directory).

    Creates parents. ``if_match``: the current sha256 must be (one of) it, ``"*"`` any (412 otherwise,
    also when the file is missing); ``if_none_match``: create only (412 when it exists). Keeps the
    permissions of a replaced file; new files get 0666 less the umask. ``durable=False``: no fsync (a mirror).
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the content is larger than {max_bytes} bytes", code="file_too_large", limit=max_bytes)
    parts = normalize(path)
    with Root(root_dir, durable=durable) as root, root.lock():
        try:
            res = root.resolve(parts, follow=Follow.ALL, create=if_match is None)
        except NotFound:
            raise PreconditionFailed(f"{path!r} does not exist", code="precondition_failed") from None
        with res:
            existing = res.lstat()
            if existing is not None:
                check_regular(existing, res.path)
            if if_none_match and existing is not None:
                raise PreconditionFailed(f"{res.path!r} already exists", code="precondition_failed")
            previous = None
            if existing is not None and (if_match is not None or existing.st_size <= max_bytes):
                previous = _current_sha(root, res)
            _check_if_match(res.path, if_match, existing is not None, previous)
            mode = (existing.st_mode & 0o777) if existing is not None else 0o666 & ~umask()
            try:
                tmp = write_temp(root, res.parent_fd, data, mode)
                try:
                    os.rename(tmp, res.name, src_dir_fd=res.parent_fd, dst_dir_fd=res.parent_fd)
                except BaseException:
                    os.unlink(tmp, dir_fd=res.parent_fd)
                    raise
                root.sync(res.parent_fd)
            except OSError as exc:
                raise os_error(exc, res.path) from None
            return WriteResult(res.path, hashlib.sha256(data).hexdigest(), len(data), existing is None, previous)


def _check_if_match(path: str, if_match: str | Sequence[str] | None, exists: bool, current: str | None) -> None:
    """412 unless the file exists and its sha256 is one of ``if_match`` (``"*"``: exists at all)."""
    if if_match is None:
        return
    wanted = {if_match.lower()} if isinstance(if_match, str) else {tag.lower() for tag in if_match}
    if not exists:
        raise PreconditionFailed(f"{path!r} does not exist", code="precondition_failed")
    if "*" not in wanted and current not in wanted:
        raise PreconditionFailed(
            f"{path!r} changed (its sha256 is not the one in If-Match)",
            code="precondition_failed",
            current_sha256=current,
        )


def delete_path(
    root_dir: str | os.PathLike[str],
    path: str,
    *,
    if_match: str | Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    durable: bool = True,
) -> DeleteResult:
    """Delete a file, symlink (the link itself) or empty directory; 409 for a non-empty directory.

    ``if_match`` as for ``write_file`` (a regular file's sha256), 412 on mismatch.
    """
    parts = normalize(path)
    with Root(root_dir, durable=durable) as root, root.lock(), root.resolve(parts, follow=Follow.PARENTS) as res:
        st = res.lstat()
        if st is None:
            raise NotFound(f"{res.path!r} does not exist")
        kind = _entry_type(st.st_mode)
        sha = None
        if kind == "file" and (st.st_size <= max_bytes or if_match is not None):
            sha = _current_sha(root, res)
        _check_if_match(res.path, if_match, True, sha)
        try:
            if kind == "dir":
                os.rmdir(res.name, dir_fd=res.parent_fd)
            else:
                os.unlink(res.name, dir_fd=res.parent_fd)
            root.sync(res.parent_fd)
        except OSError as exc:
            raise os_error(exc, res.path) from None
        return DeleteResult(res.path, kind, sha, st.st_size if kind == "file" else None)


def move_path(
    root_dir: str | os.PathLike[str], source: str, target: str, *, overwrite: bool = False, durable: bool = True
) -> MoveResult:
    """Move/rename a file, link or directory inside the workspace; 409 when the target exists."""
    src_parts = normalize(source)
    dst_parts = normalize(target)
    with Root(root_dir, durable=durable) as root, root.lock(), root.resolve(src_parts, follow=Follow.PARENTS) as src:
        st = src.lstat()
        if st is None:
            raise NotFound(f"{src.path!r} does not exist")
        if stat.S_ISDIR(st.st_mode) and dst_parts[: len(src.parts)] == src.parts:
            raise bad_path(join(dst_parts), "cannot move a directory into itself")
        try:
            dst = root.resolve(dst_parts, follow=Follow.PARENTS)
        except NotFound:  # parents are made only once nothing can refuse the move any more
            dst = root.resolve(dst_parts, follow=Follow.PARENTS, create=True)
        with dst:
            if dst.parts == src.parts:
                raise BadRequest("source and target are the same path", code="bad_path")
            if stat.S_ISDIR(st.st_mode) and dst.parts[: len(src.parts)] == src.parts:
                raise bad_path(dst.path, "cannot move a directory into itself")
            existing = dst.lstat()
            if existing is not None and not overwrite:
                raise Conflict(f"{dst.path!r} already exists", code="exists")
            if existing is not None and stat.S_ISDIR(existing.st_mode) != stat.S_ISDIR(st.st_mode):
                raise Conflict(f"{dst.path!r} exists and is of another type", code="exists")
            try:
                os.rename(src.name, dst.name, src_dir_fd=src.parent_fd, dst_dir_fd=dst.parent_fd)
                root.sync(dst.parent_fd)
                root.sync(src.parent_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise Conflict(f"{dst.path!r} is a directory that is not empty", code="exists") from None
                raise os_error(exc, dst.path) from None
            return MoveResult(src.path, dst.path, _entry_type(st.st_mode))


__all__ = [
    "DeleteResult",
    "Entry",
    "MoveResult",
    "RawFile",
    "TextFile",
    "Tree",
    "WriteResult",
    "delete_path",
    "list_tree",
    "move_path",
    "read_raw",
    "read_text",
    "write_file",
]
