"""Validate and apply a diff against a workspace directory, all files or none.

Semantics follow ``git apply`` (no index): each file's preimage comes from the working tree, or from
the result of an earlier patch to the same path in the same diff; renames read the tree; a path a
later patch deletes or renames away may be created; deletions must leave an empty result.

Errors. A malformed or refused diff is 400 ``bad_diff``; a diff or result over a limit is 413. When
the diff does not apply to the current tree (context mismatch, missing or existing file, a link in
the way) or a given base hash differs from the file's current sha256, ``apply`` raises 409: code
``patch_conflict`` or ``base_mismatch``, with the per-file checks (and mismatches) in the body. 409
rather than 412: the client sent no HTTP precondition; the diff's own base disagrees with the tree.
"""

from __future__ import annotations

import copy
import hashlib
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from app.errors import BadRequest, Conflict, DomainError, NotFound, PayloadTooLarge
from app.services.files.patches.commit import Change, commit
from app.services.files.patches.engine import apply_hunks
from app.services.files.patches.model import (
    AppliedFile,
    ApplyResult,
    FileCheck,
    FilePatch,
    HunkConflict,
    PatchLimits,
    ValidateResult,
)
from app.services.files.patches.parse import parse_diff
from app.services.files.paths import Follow, Resolved, Root, join, normalize, os_error, read_fd, umask


class _Reject(Exception):
    """A file of the diff cannot apply to the current tree (reported, not raised to the client)."""


@dataclass(slots=True)
class _DiskFile:
    data: bytes
    mode: int
    sha256: str


@dataclass(slots=True)
class _Result:
    data: bytes
    perms: int


_TO_BE_DELETED = object()
_WAS_DELETED = object()


class _Tree:
    """Reads of the working tree, once per path, following no symbolic link (directory fds are reused)."""

    def __init__(self, root: Root, limits: PatchLimits) -> None:
        self.root = root
        self.limits = limits
        self.files: dict[tuple[str, ...], _DiskFile | None] = {}
        self.dirs: dict[tuple[str, ...], int | None] = {}

    def close(self) -> None:
        for fd in self.dirs.values():
            if fd is not None:
                os.close(fd)
        self.dirs.clear()

    def _dir(self, parts: tuple[str, ...]) -> int | None:
        """A descriptor of directory ``parts``, None when it does not exist."""
        if parts in self.dirs:
            return self.dirs[parts]
        if len(self.dirs) >= 256:
            self.close()
        try:
            fd: int | None = self.root.open_dir(parts, follow=Follow.NONE)
        except NotFound:
            fd = None
        except DomainError as exc:
            raise _Reject(_reason(exc)) from None
        self.dirs[parts] = fd
        return fd

    def _lstat(self, parts: tuple[str, ...]) -> tuple[os.stat_result | None, int | None]:
        fd = self._dir(parts[:-1])
        if fd is None:
            return None, None
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False), fd
        except FileNotFoundError:
            return None, fd
        except OSError as exc:
            raise _Reject(_reason(os_error(exc, join(parts)))) from None

    def read(self, parts: tuple[str, ...]) -> _DiskFile | None:
        if parts in self.files:
            return self.files[parts]
        st, fd = self._lstat(parts)
        if st is None or fd is None:
            self.files[parts] = None
            return None
        if stat.S_ISLNK(st.st_mode):
            raise _Reject("is a symbolic link; patches do not follow links")
        if stat.S_ISDIR(st.st_mode):
            raise _Reject("is a directory")
        try:
            file_fd, fst = self.root.open_regular(Resolved(fd, parts[-1], parts))
        except DomainError as exc:
            raise _Reject(_reason(exc)) from None
        try:
            data = read_fd(file_fd, self.limits.max_file_bytes, join(parts), fst.st_size)
        finally:
            os.close(file_fd)
        found = _DiskFile(data, fst.st_mode, hashlib.sha256(data).hexdigest())
        self.files[parts] = found
        return found

    def exists(self, parts: tuple[str, ...]) -> bool:
        return self._lstat(parts)[0] is not None

    def check_parents(self, parts: tuple[str, ...]) -> None:
        """A new file's parents must be directories (or missing), never links or files."""
        for depth in range(1, len(parts)):
            if parts[:depth] in self.dirs and self.dirs[parts[:depth]] is not None:
                continue
            st, _fd = self._lstat(parts[:depth])
            if st is None:
                return
            if not stat.S_ISDIR(st.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise _Reject(f"{join(parts[:depth])!r} is {what}")


def _reason(exc: DomainError) -> str:
    return exc.detail


def _perms(patch: FilePatch, old_mode: int | None) -> int:
    executable = None if patch.new_mode is None else bool(patch.new_mode & 0o111)
    if old_mode is None:
        return (0o777 if executable else 0o666) & ~umask()
    perms = old_mode & 0o777
    if executable is True:
        return perms | ((perms & 0o444) >> 2)
    if executable is False:
        return perms & ~0o111
    return perms


def _check(
    root: Root, patches: list[FilePatch], limits: PatchLimits, tree: _Tree
) -> tuple[list[FileCheck], dict[int, Any]]:
    """Apply every patch in memory; return per-file checks and the results of those that apply."""
    table: dict[tuple[str, ...], object] = {}
    for patch in patches:
        if patch.old_parts is not None and (patch.is_delete > 0 or patch.is_rename):
            table[patch.old_parts] = _TO_BE_DELETED
    checks: list[FileCheck] = []
    results: dict[int, _Result] = {}
    for index, patch in enumerate(patches):
        error: str | None = None
        conflicts: list[HunkConflict] = []
        base: str | None = None
        try:
            data, mode = b"", None
            if patch.old_parts is not None and patch.is_new <= 0:
                previous = None if patch.is_rename else table.get(patch.old_parts)
                if previous is _WAS_DELETED:
                    raise _Reject("was renamed or deleted by an earlier part of this diff")
                disk = tree.read(patch.old_parts)
                base = disk.sha256 if disk is not None else None
                if isinstance(previous, _Result):
                    data, mode = previous.data, previous.perms
                elif disk is not None:
                    data, mode = disk.data, disk.mode
                elif patch.is_new < 0:
                    patch.is_new, patch.is_delete, patch.old_parts = 1, 0, None
                else:
                    raise _Reject("does not exist")
            patch.is_new = max(patch.is_new, 0)
            new = patch.new_parts if patch.is_delete <= 0 else None
            creates = patch.is_new > 0 or patch.is_rename
            if (
                new is not None
                and creates
                and table.get(new) not in (_WAS_DELETED, _TO_BE_DELETED)
                and tree.exists(new)
            ):
                raise _Reject("already exists")
            if new is not None:
                tree.check_parents(new)
            lines, conflicts = apply_hunks(data, patch.hunks)
            if not conflicts:
                result = b"".join(lines)
                if patch.is_delete > 0 and result:
                    raise _Reject("the deletion leaves content behind (the file differs from the diff)")
                if len(result) > limits.max_file_bytes:
                    raise PayloadTooLarge(
                        f"{patch.path!r} would be larger than {limits.max_file_bytes} bytes",
                        code="file_too_large",
                    )
                done = _Result(result, _perms(patch, mode))
                if new is not None:
                    table[new] = done
                if patch.old_parts is not None and (patch.is_delete > 0 or patch.is_rename):
                    table[patch.old_parts] = _WAS_DELETED
                results[index] = done
        except _Reject as exc:
            error = f"{patch.path}: {exc}"
        applies = error is None and not conflicts
        checks.append(
            FileCheck(
                path=patch.path,
                old_path=patch.old_path,
                operation=patch.operation,
                hunks=len(patch.hunks),
                applies=applies,
                conflicts=conflicts,
                base_sha256=base,
                error=error,
            )
        )
    return checks, results


_CACHE_ENTRIES = 4
_CACHE_MAX_BYTES = 8 << 20
_cache: OrderedDict[tuple[str, int | None, PatchLimits], list[FilePatch]] = OrderedDict()
_cache_lock = threading.Lock()


def parsed(diff: str | bytes, limits: PatchLimits, strip: int | None) -> tuple[list[FilePatch], str, int]:
    """Parse ``diff`` (remembering the last few, since apply usually follows validate of the same diff).

    Returns fresh copies of the file patches (checking adjusts them), the diff's sha256 and its size.
    """
    raw = diff.encode("utf-8", errors="surrogatepass") if isinstance(diff, str) else diff
    digest = hashlib.sha256(raw).hexdigest()
    key = (digest, strip, limits)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if found is None:
        found = parse_diff(diff, limits, strip=strip)
        if len(raw) <= _CACHE_MAX_BYTES:
            with _cache_lock:
                _cache[key] = found
                while len(_cache) > _CACHE_ENTRIES:
                    _cache.popitem(last=False)
    return [copy.copy(patch) for patch in found], digest, len(raw)


def clear_cache() -> None:
    """Forget remembered parses (tests and benchmarks)."""
    with _cache_lock:
        _cache.clear()


def validate(
    root_dir: str | os.PathLike[str], diff: str, *, limits: PatchLimits | None = None, strip: int | None = None
) -> ValidateResult:
    """Check whether ``diff`` applies to the workspace, file by file, without writing anything."""
    limits = limits or PatchLimits()
    patches, _digest, _size = parsed(diff, limits, strip)
    with Root(root_dir) as root:
        tree = _Tree(root, limits)
        try:
            checks, _ = _check(root, patches, limits, tree)
        finally:
            tree.close()
    return ValidateResult(ok=all(check.applies for check in checks), files=checks)


def _base_mismatches(tree: _Tree, patches: list[FilePatch], base_hashes: dict[str, str]) -> list[dict[str, str | None]]:
    touched = {p.old_parts for p in patches if p.old_parts} | {p.new_parts for p in patches if p.new_parts}
    mismatches: list[dict[str, str | None]] = []
    for path, expected in base_hashes.items():
        parts = normalize(path)
        if parts not in touched:
            raise BadRequest(f"base_hashes names {path!r}, which the diff does not touch", code="bad_request")
        try:
            disk = tree.read(parts)
            actual = disk.sha256 if disk is not None else None
        except _Reject:
            actual = None
        if actual != (expected or "").lower():
            mismatches.append({"path": join(parts), "expected": expected, "actual": actual})
    return mismatches


def apply(
    root_dir: str | os.PathLike[str],
    diff: str,
    base_hashes: dict[str, str] | None = None,
    *,
    limits: PatchLimits | None = None,
    strip: int | None = None,
    durable: bool = True,
) -> ApplyResult:
    """Apply ``diff`` to every file or to none; 409 when it does not apply or a base hash differs
    (``durable=False``: nothing synced to disk, for a scratch mirror)."""
    limits = limits or PatchLimits()
    patches, digest, size = parsed(diff, limits, strip)
    with Root(root_dir, durable=durable) as root, root.lock():
        tree = _Tree(root, limits)
        try:
            mismatches = _base_mismatches(tree, patches, base_hashes or {})
            checks, results = _check(root, patches, limits, tree)
        finally:
            tree.close()
        failing = [check for check in checks if not check.applies]
        if mismatches or failing:
            files = [msgspec.to_builtins(check) for check in checks]
            if mismatches:
                raise Conflict(
                    f"{len(mismatches)} file(s) changed since the diff's base",
                    code="base_mismatch",
                    mismatches=mismatches,
                    files=files,
                )
            raise Conflict(f"{len(failing)} of {len(checks)} file(s) do not apply", code="patch_conflict", files=files)
        final: dict[tuple[str, ...], _Result | None] = {}
        for patch in patches:
            if patch.old_parts is not None and (patch.is_delete > 0 or patch.is_rename):
                final[patch.old_parts] = None
        for index, patch in enumerate(patches):
            if patch.is_delete <= 0 and patch.new_parts is not None:
                final[patch.new_parts] = results[index]
        commit(
            root,
            [Change(parts, None if r is None else r.data, 0 if r is None else r.perms) for parts, r in final.items()],
        )
    applied = []
    for patch, check in zip(patches, checks, strict=True):
        state = final.get(patch.new_parts) if patch.new_parts is not None and patch.is_delete <= 0 else None
        applied.append(
            AppliedFile(
                path=patch.path,
                old_path=patch.old_path,
                operation=patch.operation,
                sha256=hashlib.sha256(state.data).hexdigest() if state is not None else None,
                size=len(state.data) if state is not None else None,
                base_sha256=check.base_sha256,
            )
        )
    return ApplyResult(files=applied, diff_sha256=digest, diff_size=size)
