"""Safe paths inside a workspace root.

Every user path is first checked as text (``normalize``): relative, no ``..``, no NUL or control
characters, no backslashes, no percent-encoded dots/separators/controls, bounded lengths. All I/O then
goes through ``Root``: an ``O_DIRECTORY`` descriptor of the workspace directory from which each component
is opened with ``openat`` and ``O_NOFOLLOW``, so the kernel never follows a symbolic link for us and a
link swapped in between a check and a use is seen (``ELOOP``) instead of followed.

Symlink policy. Listings show links as ``symlink`` and never descend into them. Reads and writes of
the files API follow a link only when its target, resolved component by component beneath the root,
stays inside the workspace (what an editor does with ``README -> docs/README.md``); absolute targets and
targets leaving the root are refused. Delete and move act on the link itself, like ``rm`` and ``mv``.
Patches follow no link at all (as ``git apply``: "beyond a symbolic link").

Writes replace directory entries (temp file + ``rename``) and never write into an existing inode, so a
hard link to a file elsewhere is never modified.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from app.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound, PayloadTooLarge

NAME_MAX = 255
PATH_MAX = 4096
MAX_COMPONENTS = 256
MAX_SYMLINK_HOPS = 40

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

# C0/C1 controls and DEL, line/paragraph separators, bidi overrides and isolates, lone surrogates.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# Percent-encodings of '.', '/', '\\', '%', controls, and overlong UTF-8 forms of them.
_BAD_ESCAPES = re.compile(r"%(?:2e|2f|5c|25|[01][0-9a-f]|7f|c0|c1|e0%[89][0-9a-f]|f0%8[0-9a-f])", re.IGNORECASE)


class Follow(Enum):
    """Which symbolic links a resolution may follow (only ever to targets inside the root)."""

    NONE = "none"
    PARENTS = "parents"
    ALL = "all"


def bad_path(path: str, reason: str) -> BadRequest:
    """The 400 every refused path raises."""
    shown = path if len(path) <= 200 else path[:200] + "…"
    return BadRequest(f"{shown!r}: {reason}", code="bad_path")


def normalize(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """Check a user path and split it into components (``""``/``.``/``a//b`` collapse).

    Raises ``BadRequest(code="bad_path")`` for absolute paths, ``..``, NUL/control characters,
    backslashes, encoded traversal, and over-long names; the empty path only with ``allow_root``.
    """
    if not isinstance(path, str):
        raise bad_path(repr(path), "not a string")
    if _BAD_CHARS.search(path):
        raise bad_path(path, "control, separator or invalid characters are not allowed")
    if "\\" in path:
        raise bad_path(path, "backslashes are not allowed")
    if _BAD_ESCAPES.search(path):
        raise bad_path(path, "percent-encoded dots, separators or controls are not allowed")
    if path.startswith("/"):
        raise bad_path(path, "absolute paths are not allowed")
    if len(path.encode()) > PATH_MAX:
        raise bad_path(path, f"longer than {PATH_MAX} bytes")
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    for part in parts:
        if part == "..":
            raise bad_path(path, "'..' is not allowed")
        if len(part.encode()) > NAME_MAX:
            raise bad_path(path, f"a name is longer than {NAME_MAX} bytes")
    if len(parts) > MAX_COMPONENTS:
        raise bad_path(path, "too deeply nested")
    if not parts and not allow_root:
        raise bad_path(path, "names the workspace root itself")
    return parts


def join(parts: tuple[str, ...]) -> str:
    """The canonical text form of a component tuple."""
    return "/".join(parts)


def os_error(exc: OSError, path: str) -> DomainError:
    """Map an ``OSError`` met while handling ``path`` to a domain error."""
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"{path!r} does not exist")
    if code == errno.ENOTDIR:
        return Conflict(f"a parent of {path!r} is not a directory", code="not_a_directory")
    if code == errno.EISDIR:
        return Conflict(f"{path!r} is a directory", code="is_directory")
    if code == errno.EEXIST:
        return Conflict(f"{path!r} already exists", code="exists")
    if code == errno.ENOTEMPTY:
        return Conflict(f"{path!r} is a directory that is not empty", code="directory_not_empty")
    if code == errno.ELOOP:
        return bad_path(path, "a symbolic link is in the way")
    if code == errno.ENAMETOOLONG:
        return bad_path(path, "name too long")
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return PayloadTooLarge(f"no space left for {path!r}", code="no_space")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Forbidden(f"permission denied for {path!r}", code="permission_denied")
    if code in (errno.EINVAL, errno.EXDEV, errno.EBUSY):
        return BadRequest(f"cannot do this with {path!r}: {exc.strerror}", code="bad_path")
    return Conflict(f"{path!r}: {exc.strerror}", code="io_error")


def link_target(base: tuple[str, ...], target: str, shown: str) -> tuple[str, ...]:
    """Resolve a symlink ``target`` found in directory ``base`` lexically; refuse anything leaving the root."""
    if not target or target.startswith("/"):
        raise bad_path(shown, "a symbolic link points outside the workspace")
    out = list(base)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise bad_path(shown, "a symbolic link points outside the workspace")
            out.pop()
        else:
            out.append(part)
    return tuple(out)


def umask() -> int:
    """The process umask, read without changing it (Linux); 0o022 when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@dataclass(slots=True)
class Resolved:
    """A path resolved beneath the root: an open descriptor of its parent and its final name."""

    parent_fd: int
    name: str
    parts: tuple[str, ...]

    @property
    def path(self) -> str:
        """Canonical relative path."""
        return join(self.parts)

    def close(self) -> None:
        """Close the parent descriptor."""
        if self.parent_fd >= 0:
            os.close(self.parent_fd)
            self.parent_fd = -1

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self) -> os.stat_result | None:
        """``lstat`` of the final name, or None when it does not exist."""
        try:
            return os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, self.path) from None


class Root:
    """An open workspace directory; every path operation is relative to its descriptor."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable  # False: a scratch copy (a remote storage's mirror), nothing is synced to disk
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("the workspace directory does not exist", code="workspace_dir_missing") from None
        st = os.fstat(self.fd)
        self._owner = (st.st_uid, st.st_gid)

    def sync(self, fd: int) -> None:
        """``fsync`` ``fd`` unless this root is a scratch copy."""
        if self.durable:
            os.fsync(fd)

    def close(self) -> None:
        """Close the root descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive advisory lock on the workspace (``flock`` on the root), held across a mutation."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def adopt(self, fd: int) -> None:
        """Give a file or directory the hub created to the workspace owner (only when running as root)."""
        if os.geteuid() == 0 and self._owner != (0, 0):
            with contextlib.suppress(OSError):
                os.fchown(fd, *self._owner)

    def resolve(
        self,
        parts: tuple[str, ...],
        *,
        follow: Follow = Follow.PARENTS,
        create: bool = False,
        created: list[tuple[str, ...]] | None = None,
    ) -> Resolved:
        """Open the parent directory of ``parts`` beneath the root, component by component.

        ``follow`` decides which in-root links are followed; ``create`` makes missing parents (their
        paths are appended to ``created``). Raises NotFound, Conflict(not_a_directory) or bad_path.
        """
        shown = join(parts)
        for _hop in range(MAX_SYMLINK_HOPS):
            walked = self._walk(parts, follow, create, created, shown)
            if isinstance(walked, tuple):
                parts = walked
                continue
            fd = walked
            if follow is Follow.ALL and parts:
                try:
                    target = self._final_link(fd, parts, shown)
                except BaseException:
                    os.close(fd)
                    raise
                if target is not None:
                    os.close(fd)
                    parts = target
                    continue
            return Resolved(fd, parts[-1] if parts else "", parts)
        raise bad_path(shown, "too many levels of symbolic links")

    def _walk(
        self,
        parts: tuple[str, ...],
        follow: Follow,
        create: bool,
        created: list[tuple[str, ...]] | None,
        shown: str,
    ) -> int | tuple[str, ...]:
        """Open each parent component; return the parent's fd, or new parts when a link must be followed."""
        fd = os.dup(self.fd)
        try:
            for i, name in enumerate(parts[:-1]):
                try:
                    nfd = self._open_dir(fd, name, create, created, parts[: i + 1])
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        st = _lstat(fd, name)
                        if st is not None and stat.S_ISLNK(st.st_mode):
                            if follow is Follow.NONE:
                                raise bad_path(shown, "a parent directory is a symbolic link") from None
                            target = os.readlink(name, dir_fd=fd)
                            followed = link_target(parts[:i], target, shown) + parts[i + 1 :]
                            os.close(fd)
                            return followed
                    if exc.errno == errno.ENOENT:
                        raise NotFound(f"{shown!r} does not exist") from None
                    raise os_error(exc, shown) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_dir(
        self, fd: int, name: str, create: bool, created: list[tuple[str, ...]] | None, sub: tuple[str, ...]
    ) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.mkdir(name, 0o777, dir_fd=fd)
        except FileExistsError:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        self.adopt(nfd)
        if created is not None:
            created.append(sub)
        return nfd

    def _final_link(self, fd: int, parts: tuple[str, ...], shown: str) -> tuple[str, ...] | None:
        st = _lstat(fd, parts[-1])
        if st is None or not stat.S_ISLNK(st.st_mode):
            return None
        return link_target(parts[:-1], os.readlink(parts[-1], dir_fd=fd), shown)

    def open_dir(
        self,
        parts: tuple[str, ...],
        *,
        follow: Follow = Follow.ALL,
        create: bool = False,
        created: list[tuple[str, ...]] | None = None,
    ) -> int:
        """Open the directory ``parts`` (the root for ``()``), creating it and its parents if asked."""
        if not parts:
            return os.dup(self.fd)
        with self.resolve(parts, follow=follow, create=create, created=created) as res:
            try:
                return self._open_dir(res.parent_fd, res.name, create, created, res.parts)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    st = _lstat(res.parent_fd, res.name)
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        raise bad_path(res.path, "is a symbolic link") from None
                    raise Conflict(f"{res.path!r} is not a directory", code="not_a_directory") from None
                raise os_error(exc, res.path) from None

    def open_regular(self, res: Resolved) -> tuple[int, os.stat_result]:
        """Open the regular file ``res`` names for reading; refuse links, directories, devices, FIFOs."""
        st = res.lstat()
        if st is None:
            raise NotFound(f"{res.path!r} does not exist")
        check_regular(st, res.path)
        try:
            fd = os.open(res.name, _READ_FLAGS, dir_fd=res.parent_fd)
        except OSError as exc:
            raise os_error(exc, res.path) from None
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise bad_path(res.path, "the file changed while it was opened")
        return fd, fst


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_regular(st: os.stat_result, path: str) -> None:
    """Refuse anything but a regular file: directories 409, links/devices/FIFOs/sockets 400."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise Conflict(f"{path!r} is a directory", code="is_directory")
    if stat.S_ISLNK(mode):
        raise bad_path(path, "is a symbolic link")
    raise bad_path(path, "not a regular file (device, FIFO or socket)")


def read_fd(fd: int, limit: int, path: str, size_hint: int = 0) -> bytes:
    """Read a whole descriptor, refusing more than ``limit`` bytes with 413."""
    if size_hint > limit:
        raise PayloadTooLarge(f"{path!r} is larger than {limit} bytes", code="file_too_large", limit=limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, max(65536, min(size_hint + 1, limit + 1) - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"{path!r} is larger than {limit} bytes", code="file_too_large", limit=limit)
    return b"".join(chunks)


def write_temp(root: Root, dir_fd: int, data: bytes, mode: int, *, sync: bool = True) -> str:
    """Write ``data`` to a fresh temp file in ``dir_fd`` (exclusive create, no-follow); return its name."""
    name, fd = write_temp_open(root, dir_fd, data, mode)
    try:
        if sync:
            root.sync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)
    return name


def write_temp_open(root: Root, dir_fd: int, data: bytes, mode: int) -> tuple[str, int]:
    """Like ``write_temp`` without syncing; returns the name and the still-open descriptor."""
    for _ in range(8):
        name = f".codehub-{os.urandom(8).hex()}.tmp"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 64 random bits collided eight times
        raise Conflict("could not create a temporary file", code="io_error")
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)
        root.adopt(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    return name, fd
