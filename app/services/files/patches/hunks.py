"""One hunk of a unified diff: its body counted against its header, as git apply reads it."""

from __future__ import annotations

import re

from app.errors import BadRequest
from app.services.files.patches.model import Hunk

HUNK_HEADER = re.compile(rb"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NL = b"\n"


def bad_diff(reason: str) -> BadRequest:
    """The 400 every malformed or refused diff raises."""
    return BadRequest(reason, code="bad_diff")


def parse_hunk(lines: list[bytes], i: int, match: re.Match[bytes], shown: str, number: int) -> tuple[Hunk, int]:
    """Read the hunk whose header ``match`` is on line ``i``; return it and the index after its body.

    ``lines`` keep their ``\\n``. The body must hold exactly the lines the header counts; a following
    line that looks like more of the hunk is refused (git would silently drop it).
    """
    n = len(lines)
    old_start, new_start = int(match[1]), int(match[3])
    old_count = 1 if match[2] is None else int(match[2])
    new_count = 1 if match[4] is None else int(match[4])
    header_line = i + 1
    where = _Where(shown, number, header_line)
    i += 1
    old_left, new_left = old_count, new_count
    old_lines: list[bytes] = []
    new_lines: list[bytes] = []
    old_add, new_add = old_lines.append, new_lines.append
    body = i
    try:
        while old_left > 0 or new_left > 0:
            line = lines[i]
            c = line[0]
            if c == 32:  # ' ' context
                text = line[1:]
                old_add(text)
                new_add(text)
                old_left -= 1
                new_left -= 1
            elif c == 45:  # '-'
                old_add(line[1:])
                old_left -= 1
            elif c == 43:  # '+'
                new_add(line[1:])
                new_left -= 1
            elif c == 10:  # a bare newline: an empty context line
                old_add(line)
                new_add(line)
                old_left -= 1
                new_left -= 1
            elif c == 92:  # '\\'
                _no_newline(line, lines[i - 1][0] if i > body else -1, old_lines, new_lines, where)
            else:
                raise bad_diff(f"{where}: unexpected line {i + 1} {line[:60]!r}")
            i += 1
    except IndexError:
        raise bad_diff(f"{where}: the diff ends before the lines its header counts") from None
    if old_left < 0 or new_left < 0:
        raise bad_diff(f"{where}: more lines than its header counts")
    if i < n and lines[i][0] == 92:
        _no_newline(lines[i], lines[i - 1][0] if i > body else -1, old_lines, new_lines, where)
        i += 1
    leading, trailing, changed = _context(lines, body, i)
    if not changed:
        raise bad_diff(f"{where}: no added or removed lines")
    if i < n:
        nxt = lines[i]
        c = nxt[0]
        if c in (43, 32) or (c == 45 and not nxt.startswith(b"--- ") and nxt.rstrip() != b"--"):
            raise bad_diff(f"{where}: more lines than its header counts")
    return Hunk(old_start, old_count, new_start, new_count, old_lines, new_lines, leading, trailing, header_line), i


class _Where:
    """Names a hunk in error messages (formatted only when one is raised)."""

    __slots__ = ("line", "number", "shown")

    def __init__(self, shown: str, number: int, line: int) -> None:
        self.shown, self.number, self.line = shown, number, line

    def __str__(self) -> str:
        return f"hunk {self.number} of {self.shown!r} (line {self.line})"


def _context(lines: list[bytes], start: int, end: int) -> tuple[int, int, bool]:
    """Context lines before the first and after the last change of a hunk body, and whether it changes."""
    leading = 0
    for k in range(start, end):
        c = lines[k][0]
        if c == 43 or c == 45:
            break
        if c != 92:
            leading += 1
    else:
        return leading, leading, False
    trailing = 0
    for k in range(end - 1, start - 1, -1):
        c = lines[k][0]
        if c == 43 or c == 45:
            break
        if c != 92:
            trailing += 1
    return leading, trailing, True


def _no_newline(line: bytes, previous: int, old_lines: list[bytes], new_lines: list[bytes], where: object) -> None:
    """Apply a ``\\ No newline at end of file`` marker to the line before it (whose first byte is given)."""
    if len(line) < 12 or not line.startswith(b"\\ ") or previous not in (32, 10, 43, 45):
        raise bad_diff(f"{where}: misplaced line {line[:60]!r}")
    targets = (old_lines,) if previous == 45 else (new_lines,) if previous == 43 else (old_lines, new_lines)
    for target in targets:
        if not target or not target[-1].endswith(NL):
            raise bad_diff(f"{where}: misplaced 'No newline' marker")
        target[-1] = target[-1][:-1]
