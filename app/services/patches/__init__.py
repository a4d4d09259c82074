"""Unified diffs: parse, validate and apply them to a workspace directory, all files or none."""

from app.services.patches.apply import apply, clear_cache, validate
from app.services.patches.model import (
    AppliedFile,
    ApplyResult,
    FileCheck,
    HunkConflict,
    PatchLimits,
    ValidateResult,
)
from app.services.patches.parse import parse_diff

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
