"""Unified diffs: parse, validate and apply them to a workspace directory, all files or none."""

from app.services.files.patches.apply import apply, clear_cache, validate
from app.services.files.patches.model import (
    AppliedFile,
    ApplyResult,
    FileCheck,
    HunkConflict,
    PatchLimits,
    ValidateResult,
)
from app.services.files.patches.parse import parse_diff

__all__ = [
    "AppliedFile",
    "ApplyResult",
    "FileCheck",
    "HunkConflict",
    "PatchLimits",
    "ValidateResult",
    "apply",
    "clear_cache",
    "parse_diff",
    "validate",
]
