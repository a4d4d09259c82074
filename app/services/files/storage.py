"""The storage seam: a workspace's files wherever they live, as the runtime that holds them provides them.

Everything that touches workspace files (the files API, patch validate/apply, the AI context builder, git
clone, purge) goes through a ``WorkspaceStorage``; it never assumes the files are on the hub's disk. Two
backends: ``LocalStorage`` (a directory on the hub's machine: the local-process runtime, and this module's
reference semantics) and the Docker runtime's volume storage (``app.services.runtime.docker_storage``), which
keeps the same path safety, ETag = sha256 and all-or-nothing apply by validating on the hub, then writing.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import anyio

from app.services.files import operations as ops
from app.services.files import patches
from app.services.files.operations import DeleteResult, MoveResult, RawFile, TextFile, Tree, WriteResult

Fill = Callable[[Path], Awaitable[None]]
"""Writes a tree into an empty local directory (a git clone); ``populate`` then makes it the workspace's."""


class BlockingFiles(Protocol):
    """Reads for code that runs in a worker thread (the AI context builder)."""

    def read_text(self, path: str, max_bytes: int) -> TextFile:
        """As ``WorkspaceStorage.read_text``, blocking."""
        ...

    def list_dir(self, path: str, max_entries: int) -> Tree:
        """One level of ``path``, blocking."""
        ...


class WorkspaceStorage(Protocol):
    """The files of one workspace. Paths are user paths relative to the project root (checked here)."""

    kind: str
    """``directory`` or ``volume``."""

    @property
    def local_root(self) -> Path | None:
        """The directory on the hub's machine, when the files are there (fast paths may use it), else None."""
        ...

    async def ensure(self) -> None:
        """Create the storage (empty project) if it does not exist yet."""
        ...

    async def is_empty(self) -> bool:
        """True when the project has no entries (or the storage does not exist yet)."""
        ...

    async def list_tree(self, path: str, depth: int, *, include_git: bool, max_entries: int) -> Tree:
        """Entries below ``path`` down to ``depth`` levels (``operations.list_tree``)."""
        ...

    async def read_text(self, path: str, *, max_bytes: int) -> TextFile:
        """A UTF-8 text file (415 for binary content, 413 over ``max_bytes``)."""
        ...

    async def read_raw(self, path: str, *, max_bytes: int) -> RawFile:
        """A file's bytes (413 over ``max_bytes``)."""
        ...

    async def write_file(
        self,
        path: str,
        data: bytes,
        *,
        if_match: str | Sequence[str] | None = None,
        if_none_match: bool = False,
        max_bytes: int = ops.DEFAULT_MAX_FILE_BYTES,
    ) -> WriteResult:
        """Atomically replace or create a file (``operations.write_file``: If-Match by sha256)."""
        ...

    async def delete_path(
        self, path: str, *, if_match: str | Sequence[str] | None = None, max_bytes: int = ops.DEFAULT_MAX_FILE_BYTES
    ) -> DeleteResult:
        """Delete a file, link or empty directory."""
        ...

    async def move_path(self, source: str, target: str, *, overwrite: bool = False) -> MoveResult:
        """Move or rename inside the project."""
        ...

    async def validate_patch(
        self, diff: str, *, limits: patches.PatchLimits, strip: int | None = None
    ) -> patches.ValidateResult:
        """Whether each file of a unified diff applies; writes nothing."""
        ...

    async def apply_patch(
        self,
        diff: str,
        base_hashes: dict[str, str] | None = None,
        *,
        limits: patches.PatchLimits,
        strip: int | None = None,
    ) -> patches.ApplyResult:
        """Apply a diff to every file or to none."""
        ...

    async def populate(self, fill: Fill) -> None:
        """Run ``fill`` on an empty local directory and make what it wrote the project (git clone)."""
        ...

    async def purge(self) -> None:
        """Delete the files and the storage itself (missing is fine)."""
        ...

    def blocking(self) -> BlockingFiles:
        """Blocking reads for worker-thread code (call its methods from a worker thread only)."""
        ...


class _LocalBlocking:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read_text(self, path: str, max_bytes: int) -> TextFile:
        return ops.read_text(self.root, path, max_bytes=max_bytes)

    def list_dir(self, path: str, max_entries: int) -> Tree:
        return ops.list_tree(self.root, path, 1, max_entries=max_entries)


class LocalStorage:
    """A directory on the hub's machine (created on first use), worked on in worker threads."""

    kind = "directory"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def local_root(self) -> Path | None:
        """The directory itself."""
        return self.root

    async def ensure(self) -> None:
        """Create the directory (a workspace that never ran has no files yet)."""
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))

    async def is_empty(self) -> bool:
        """True when the directory is missing or has no entries."""
        return await anyio.to_thread.run_sync(lambda: not self.root.exists() or not any(self.root.iterdir()))

    async def list_tree(self, path: str, depth: int, *, include_git: bool, max_entries: int) -> Tree:
        """``operations.list_tree`` in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: ops.list_tree(self.root, path, depth, include_git=include_git, max_entries=max_entries)
        )

    async def read_text(self, path: str, *, max_bytes: int) -> TextFile:
        """``operations.read_text`` in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: ops.read_text(self.root, path, max_bytes=max_bytes))

    async def read_raw(self, path: str, *, max_bytes: int) -> RawFile:
        """``operations.read_raw`` in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: ops.read_raw(self.root, path, max_bytes=max_bytes))

    async def write_file(
        self,
        path: str,
        data: bytes,
        *,
        if_match: str | Sequence[str] | None = None,
        if_none_match: bool = False,
        max_bytes: int = ops.DEFAULT_MAX_FILE_BYTES,
    ) -> WriteResult:
        """``operations.write_file`` in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: ops.write_file(
                self.root, path, data, if_match=if_match, if_none_match=if_none_match, max_bytes=max_bytes
            )
        )

    async def delete_path(
        self, path: str, *, if_match: str | Sequence[str] | None = None, max_bytes: int = ops.DEFAULT_MAX_FILE_BYTES
    ) -> DeleteResult:
        """``operations.delete_path`` in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: ops.delete_path(self.root, path, if_match=if_match, max_bytes=max_bytes)
        )

    async def move_path(self, source: str, target: str, *, overwrite: bool = False) -> MoveResult:
        """``operations.move_path`` in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: ops.move_path(self.root, source, target, overwrite=overwrite))

    async def validate_patch(
        self, diff: str, *, limits: patches.PatchLimits, strip: int | None = None
    ) -> patches.ValidateResult:
        """``patches.validate`` in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: patches.validate(self.root, diff, limits=limits, strip=strip))

    async def apply_patch(
        self,
        diff: str,
        base_hashes: dict[str, str] | None = None,
        *,
        limits: patches.PatchLimits,
        strip: int | None = None,
    ) -> patches.ApplyResult:
        """``patches.apply`` in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: patches.apply(self.root, diff, base_hashes, limits=limits, strip=strip)
        )

    async def populate(self, fill: Fill) -> None:
        """Run ``fill`` on the directory itself."""
        await fill(self.root)

    async def purge(self) -> None:
        """Delete the directory and everything in it."""
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.root, ignore_errors=True))

    def blocking(self) -> BlockingFiles:
        """Direct reads of the directory."""
        return _LocalBlocking(self.root)


__all__ = ["BlockingFiles", "Fill", "LocalStorage", "WorkspaceStorage"]
