"""Unified diff parser: git diffs (``diff --git``, modes, renames, quoted names) and plain ``diff -u``.

Follows ``git apply``'s reading of a diff (see git's apply.c) with three deliberate differences: binary
patches, copies, symlink and submodule entries are refused instead of handled; a hunk followed by more
hunk-looking lines than its header counts is refused instead of silently cut; absolute paths are
refused instead of having their leading slash stripped. Every path goes through
``app.services.files.paths.normalize`` and may not contain a ``.git`` component.
"""

from __future__ import annotations

import re

from app.errors import BadRequest, PayloadTooLarge
from app.services.files.patches.engine import NL, split_lines
from app.services.files.patches.hunks import HUNK_HEADER as _HUNK
from app.services.files.patches.hunks import bad_diff, parse_hunk
from app.services.files.patches.model import FilePatch, Hunk, PatchLimits
from app.services.files.paths import normalize

_TIMESTAMP = re.compile(rb"(?:\t| +)\d{2,4}-\d\d-\d\d(?: \d\d:\d\d:\d\d(?:\.\d+)?)?(?: ?[+-]\d\d:?\d\d)? *$")
_EPOCH = re.compile(rb"\t(1969-12-31|1970-01-01) (\d\d):(\d\d):00(?:\.0+)? ([-+])(\d\d):?(\d\d)$")
_ESCAPES = {ord("a"): 7, ord("b"): 8, ord("t"): 9, ord("n"): 10, ord("v"): 11, ord("f"): 12, ord("r"): 13}
_REGULAR_MODES = {0o100644, 0o100755, 0o100664}
DEV_NULL = ("/dev/null",)


def parse_diff(diff: str | bytes, limits: PatchLimits | None = None, *, strip: int | None = None) -> list[FilePatch]:
    """Parse ``diff`` into file patches; ``strip`` is git's ``-p`` (default 1, guessed for plain diffs).

    Raises ``BadRequest(code="bad_diff")`` with the reason, or 413 ``diff_too_large`` over a limit.
    """
    limits = limits or PatchLimits()
    if isinstance(diff, str):
        try:
            data = diff.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_diff("the diff is not valid UTF-8 text") from None
    else:
        data = diff
    if len(data) > limits.max_patch_bytes:
        raise PayloadTooLarge(f"the diff is larger than {limits.max_patch_bytes} bytes", code="diff_too_large")
    return _Parser(split_lines(data), limits, strip).run()


def _unquote(raw: bytes) -> tuple[bytes, bytes]:
    """Undo git's C-style quoting of ``"..."``; return the name and the rest after the closing quote."""
    out = bytearray()
    i = 1
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x22:
            return bytes(out), raw[i + 1 :]
        if c == 0x5C:
            i += 1
            if i >= n:
                break
            c = raw[i]
            if c in _ESCAPES:
                out.append(_ESCAPES[c])
            elif 0x30 <= c <= 0x37:
                digits = raw[i : i + 3]
                if len(digits) != 3 or not all(0x30 <= d <= 0x37 for d in digits):
                    raise bad_diff(f"bad octal escape in quoted name {raw[:80]!r}")
                out.append(int(digits, 8) & 0xFF)
                i += 2
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    raise bad_diff(f"unterminated quoted name {raw[:80]!r}")


def _strip(name: bytes, p: int) -> bytes | None:
    """Drop ``p`` leading components (git's ``-p``); None when there are not enough."""
    shown = name[:200].decode(errors="replace")
    if name.startswith(b"/"):
        raise bad_diff(f"absolute path {shown!r} in the diff")
    for _ in range(p):
        cut = name.find(b"/")
        if cut < 0:
            return None
        name = name[cut + 1 :]
    if name.startswith(b"/"):
        raise bad_diff(f"absolute path in {shown!r} once its prefix is removed")
    return name


def _parts(name: bytes) -> tuple[str, ...]:
    """Check a stripped name as a workspace path; refuse ``.git`` components."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_diff(f"path {name[:200]!r} is not UTF-8") from None
    try:
        parts = normalize(text)
    except BadRequest as exc:
        raise bad_diff(f"refused path in the diff: {exc.detail}") from None
    if any(part.lower() == ".git" for part in parts):
        raise bad_diff(f"path {text!r} is inside .git")
    return parts


def _mode(line: bytes, lineno: int) -> int:
    try:
        mode = int(line.split()[0], 8)
    except (ValueError, IndexError):
        raise bad_diff(f"line {lineno}: invalid mode {line[:40]!r}") from None
    if mode in _REGULAR_MODES:
        return mode
    kind = {0o120000: "symbolic link", 0o160000: "submodule"}.get(mode & 0o170000)
    if kind:
        raise bad_diff(f"line {lineno}: {kind} patches are not supported")
    raise bad_diff(f"line {lineno}: unsupported file mode {mode:o}")


def _is_binary_marker(line: bytes) -> bool:
    return line == b"GIT binary patch" or (
        line.startswith((b"Binary files ", b"Files ")) and line.rstrip(b"\r").endswith(b" differ")
    )


class _Parser:
    def __init__(self, lines: list[bytes], limits: PatchLimits, strip: int | None) -> None:
        if lines and not lines[-1].endswith(NL):
            lines[-1] += NL
        self.lines = lines
        self.n = len(lines)
        self.i = 0
        self.limits = limits
        self.strip = strip
        self.hunk_count = 0
        self.patches: list[FilePatch] = []

    def run(self) -> list[FilePatch]:
        lines, n = self.lines, self.n
        while self.i < n:
            line = lines[self.i][:-1]
            if line.startswith(b"diff --git "):
                self._add(self._git())
            elif (
                line.startswith(b"--- ")
                and self.i + 2 < n
                and lines[self.i + 1].startswith(b"+++ ")
                and lines[self.i + 2].startswith(b"@@ -")
            ):
                self._add(self._traditional())
            elif line.startswith(b"@@ -") and _HUNK.match(line):
                raise bad_diff(f"line {self.i + 1}: hunk without a file header")
            elif _is_binary_marker(line):
                raise bad_diff(f"line {self.i + 1}: binary patches are not supported")
            else:
                self.i += 1
        if not self.patches:
            raise bad_diff("no file changes found in the diff")
        return self.patches

    def _add(self, patch: FilePatch) -> None:
        self.patches.append(patch)
        if len(self.patches) > self.limits.max_patch_files:
            raise PayloadTooLarge(
                f"the diff touches more than {self.limits.max_patch_files} files", code="diff_too_large"
            )

    def _name(self, raw: bytes, p: int, *, traditional: bool = False) -> tuple[str, ...] | None:
        if raw.startswith(b'"'):
            name, _rest = _unquote(raw)
        elif traditional:
            match = _TIMESTAMP.search(raw)
            name = raw[: match.start()] if match else raw.split(b"\t", 1)[0]
        else:
            name = raw.split(b"\t", 1)[0]
        if name == b"/dev/null":
            return DEV_NULL
        stripped = _strip(name, p)
        return None if stripped is None or not stripped else _parts(stripped)

    def _header_name(self, rest: bytes, p: int) -> tuple[str, ...] | None:
        """The name a ``diff --git`` line repeats on both sides, when unambiguous (git_header_name)."""
        if rest.startswith(b'"'):
            first, after = _unquote(rest)
            after = after.lstrip()
            second = _unquote(after)[0] if after.startswith(b'"') else after
            a, b = _strip(first, p), _strip(second, p)
            return _parts(a) if a and a == b else None
        for k in range(len(rest)):
            if rest[k] in b" \t":
                a, b_side = rest[:k], rest[k + 1 :]
                if b_side.startswith(b'"'):
                    b_side = _unquote(b_side)[0]
                sa = _strip(a, p) if not a.startswith(b"/") else None
                sb = _strip(b_side, p) if not b_side.startswith(b"/") else None
                if sa and sa == sb:
                    return _parts(sa)
        return None

    def _git(self) -> FilePatch:
        lines, n = self.lines, self.n
        start = self.i
        p = 1 if self.strip is None else self.strip
        default = self._header_name(lines[start][11:-1], p)
        old: tuple[str, ...] | None = None
        new: tuple[str, ...] | None = None
        patch = FilePatch(None, None, diff_line=start + 1)
        self.i += 1
        while self.i < n:
            line = lines[self.i][:-1]
            lineno = self.i + 1
            if line.startswith(b"@@ -"):
                break
            if line.startswith(b"--- "):
                name = self._name(line[4:], p)
                if name == DEV_NULL:
                    if old is not None and not patch.is_new:
                        raise bad_diff(f"line {lineno}: inconsistent old filename")
                    patch.is_new = 1
                elif patch.is_new or (old is not None and name != old) or name is None:
                    raise bad_diff(f"line {lineno}: inconsistent old filename")
                else:
                    old = name
            elif line.startswith(b"+++ "):
                name = self._name(line[4:], p)
                if name == DEV_NULL:
                    if new is not None and not patch.is_delete:
                        raise bad_diff(f"line {lineno}: inconsistent new filename")
                    patch.is_delete = 1
                elif patch.is_delete or (new is not None and name != new) or name is None:
                    raise bad_diff(f"line {lineno}: inconsistent new filename")
                else:
                    new = name
            elif line.startswith(b"old mode "):
                patch.old_mode = _mode(line[9:], lineno)
            elif line.startswith(b"new mode "):
                patch.new_mode = _mode(line[9:], lineno)
            elif line.startswith(b"deleted file mode "):
                patch.is_delete = 1
                old = default
                patch.old_mode = _mode(line[18:], lineno)
            elif line.startswith(b"new file mode "):
                patch.is_new = 1
                new = default
                patch.new_mode = _mode(line[14:], lineno)
            elif line.startswith((b"copy from ", b"copy to ")):
                raise bad_diff(f"line {lineno}: copy patches are not supported")
            elif line.startswith((b"rename from ", b"rename old ")):
                patch.is_rename = True
                old = self._name(line[line.index(b" ", 7) + 1 :], max(p - 1, 0))
            elif line.startswith((b"rename to ", b"rename new ")):
                patch.is_rename = True
                new = self._name(line[line.index(b" ", 7) + 1 :], max(p - 1, 0))
            elif line.startswith(b"index "):
                rest = line[6:].split(b" ")
                if len(rest) > 1:
                    patch.old_mode = _mode(rest[1], lineno)
            elif not line.startswith((b"similarity index ", b"dissimilarity index ")):
                break
            if (patch.is_new > 0) + (patch.is_delete > 0) + patch.is_rename > 1:
                raise bad_diff(f"line {lineno}: inconsistent header lines")
            self.i += 1
        if old is None and new is None:
            if default is None:
                raise bad_diff(f"line {start + 1}: git diff header lacks filename information")
            old = new = default
        if (new is None and not patch.is_delete) or (old is None and not patch.is_new):
            raise bad_diff(f"line {start + 1}: git diff header lacks filename information")
        if self.i < n and _is_binary_marker(lines[self.i][:-1]):
            raise bad_diff(f"line {self.i + 1}: binary patches are not supported")
        patch.old_parts = None if patch.is_new > 0 else old
        patch.new_parts = None if patch.is_delete > 0 else new
        shown = "/".join(new or old or ())
        patch.hunks = self._hunks(shown)
        changes_mode = patch.old_mode and patch.new_mode and patch.old_mode != patch.new_mode
        if not patch.hunks and not (patch.is_rename or patch.is_new or patch.is_delete or changes_mode):
            raise bad_diff(f"line {start + 1}: the patch for {shown!r} has no changes")
        self._check_sides(patch, shown)
        return patch

    def _traditional(self) -> FilePatch:
        lines = self.lines
        first, second = lines[self.i][4:-1], lines[self.i + 1][4:-1]
        lineno = self.i + 1
        p = self.strip
        if p is None:
            names = [name for name in map(self._raw_trad, (first, second)) if name != b"/dev/null"]
            p = 0 if names and all(b"/" not in name for name in names) else 1
        old = self._name(first, p, traditional=True)
        new = self._name(second, p, traditional=True)
        patch = FilePatch(None, None, is_new=-1, is_delete=-1, diff_line=lineno)
        if old == DEV_NULL and new == DEV_NULL:
            raise bad_diff(f"line {lineno}: both sides are /dev/null")
        if old == DEV_NULL:
            patch.is_new, patch.is_delete, name = 1, 0, new
        elif new == DEV_NULL:
            patch.is_new, patch.is_delete, name = 0, 1, old
        else:
            name = new if new is not None else old
            if old is not None and new is not None:
                short, full = "/".join(old), "/".join(new)
                if len(short) < len(full) and full.startswith(short):
                    name = old
            if _epoch(first):
                patch.is_new, patch.is_delete = 1, 0
            elif _epoch(second):
                patch.is_new, patch.is_delete = 0, 1
        if name is None:
            raise bad_diff(f"line {lineno}: unable to find the file name")
        patch.old_parts = None if patch.is_new > 0 else name
        patch.new_parts = None if patch.is_delete > 0 else name
        self.i += 2
        shown = "/".join(name)
        patch.hunks = self._hunks(shown)
        old_total = sum(h.old_count for h in patch.hunks)
        new_total = sum(h.new_count for h in patch.hunks)
        several = len(patch.hunks) > 1
        if patch.is_new < 0 and (old_total or several):
            patch.is_new = 0
        if patch.is_delete < 0 and (new_total or several):
            patch.is_delete = 0
        self._check_sides(patch, shown)
        return patch

    @staticmethod
    def _raw_trad(raw: bytes) -> bytes:
        if raw.startswith(b'"'):
            return _unquote(raw)[0]
        match = _TIMESTAMP.search(raw)
        return raw[: match.start()] if match else raw.split(b"\t", 1)[0]

    @staticmethod
    def _check_sides(patch: FilePatch, shown: str) -> None:
        if patch.is_new > 0 and any(h.old_count for h in patch.hunks):
            raise bad_diff(f"new file {shown!r} depends on old contents")
        if patch.is_delete > 0 and any(h.new_count for h in patch.hunks):
            raise bad_diff(f"deleted file {shown!r} still has contents")

    def _hunks(self, shown: str) -> list[Hunk]:
        lines, n = self.lines, self.n
        i = self.i
        hunks: list[Hunk] = []
        while i < n and lines[i].startswith(b"@@ -"):
            match = _HUNK.match(lines[i])
            if match is None:
                raise bad_diff(f"line {i + 1}: malformed hunk header {lines[i][:80]!r}")
            self.hunk_count += 1
            if self.hunk_count > self.limits.max_patch_hunks:
                raise PayloadTooLarge(
                    f"the diff has more than {self.limits.max_patch_hunks} hunks", code="diff_too_large"
                )
            hunk, i = parse_hunk(lines, i, match, shown, len(hunks) + 1)
            hunks.append(hunk)
        self.i = i
        return hunks


def _epoch(raw: bytes) -> bool:
    """GNU diff marks a created/deleted side with the epoch as its timestamp."""
    match = _EPOCH.search(raw)
    if not match:
        return False
    epoch_hour = 24 if match[1] == b"1969-12-31" else 0
    zone = int(match[5]) * 60 + int(match[6])
    if match[4] == b"-":
        zone = -zone
    return int(match[2]) * 60 + int(match[3]) - zone == epoch_hour * 60
