"""Parsed diffs and the results validate/apply return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

Operation = Literal["modify", "create", "delete", "rename"]


@dataclass(frozen=True, slots=True)
class PatchLimits:
    """Bounds on a diff and on the files it produces."""

    max_patch_bytes: int = 16_777_216
    max_patch_files: int = 1_000
    max_patch_hunks: int = 20_000
    max_file_bytes: int = 10_485_760

    @classmethod
    def from_settings(cls, settings: object) -> PatchLimits:
        """Take the limits from ``app.settings.Settings``."""
        # With slots, ``cls.max_patch_bytes`` is the slot descriptor, not the default: read an instance's.
        defaults = cls()
        return cls(
            max_patch_bytes=getattr(settings, "max_patch_bytes", defaults.max_patch_bytes),
            max_patch_files=getattr(settings, "max_patch_files", defaults.max_patch_files),
            max_patch_hunks=getattr(settings, "max_patch_hunks", defaults.max_patch_hunks),
            max_file_bytes=getattr(settings, "max_file_bytes", defaults.max_file_bytes),
        )


@dataclass(slots=True)
class Hunk:
    """One ``@@ -a,b +c,d @@`` hunk; lines keep their exact terminators (``\\n``, ``\\r\\n`` or none)."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int
    old_lines: list[bytes]
    new_lines: list[bytes]
    leading: int
    trailing: int
    diff_line: int


@dataclass(slots=True)
class FilePatch:
    """The changes to one file. ``is_new``/``is_delete`` are 1, 0, or -1 (unknown in a plain diff)."""

    old_parts: tuple[str, ...] | None
    new_parts: tuple[str, ...] | None
    is_new: int = 0
    is_delete: int = 0
    is_rename: bool = False
    old_mode: int | None = None
    new_mode: int | None = None
    hunks: list[Hunk] = field(default_factory=list)
    diff_line: int = 0

    @property
    def path(self) -> str:
        """The path the patch results in (the removed path for a deletion)."""
        parts = self.new_parts if self.new_parts is not None and self.is_delete <= 0 else self.old_parts
        return "/".join(parts or ())

    @property
    def old_path(self) -> str | None:
        """The path the patch reads from, if any."""
        return "/".join(self.old_parts) if self.old_parts is not None and self.is_new <= 0 else None

    @property
    def operation(self) -> Operation:
        """modify, create, delete or rename."""
        if self.is_new > 0:
            return "create"
        if self.is_delete > 0:
            return "delete"
        if self.is_rename:
            return "rename"
        return "modify"


class HunkConflict(msgspec.Struct, frozen=True):
    """Where a hunk's context did not match: 1-based hunk number and file line, and both texts."""

    hunk: int
    line: int
    expected: str
    found: str | None


class FileCheck(msgspec.Struct, frozen=True):
    """The validation of one file of a diff."""

    path: str
    old_path: str | None
    operation: Operation
    hunks: int
    applies: bool
    conflicts: list[HunkConflict]
    base_sha256: str | None
    error: str | None = None


class ValidateResult(msgspec.Struct, frozen=True):
    """Whether every file of the diff applies."""

    ok: bool
    files: list[FileCheck]


class AppliedFile(msgspec.Struct, frozen=True):
    """One file after an apply; ``sha256``/``size`` are None for a deleted file."""

    path: str
    old_path: str | None
    operation: Operation
    sha256: str | None
    size: int | None
    base_sha256: str | None


class ApplyResult(msgspec.Struct, frozen=True):
    """An applied diff: the new hashes, and the diff's own sha256 and size (for the audit log)."""

    files: list[AppliedFile]
    diff_sha256: str
    diff_size: int
