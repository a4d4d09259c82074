"""Applying hunks to file contents in memory, with git apply's placement rules (exact context).

A file is a list of lines that keep their terminators, so CRLF and a missing final newline survive
untouched. Each hunk's preimage is searched for starting at its new-side line number, alternating
forwards and backwards (git's ``find_pos``); a hunk starting at line 0/1 must match at the beginning,
one without trailing context at the end; lines an earlier hunk produced are never matched again.
"""

from __future__ import annotations

from app.services.files.patches.model import Hunk, HunkConflict

NL = b"\n"
_SHOWN = 200


def split_lines(data: bytes) -> list[bytes]:
    """Split into lines that keep their ``\\n`` (the last one may lack it); ``\\r`` is content."""
    if not data:
        return []
    if b"\r" not in data or data.count(b"\r") == data.count(b"\r\n"):
        return data.splitlines(keepends=True)
    parts = data.split(NL)
    last = parts.pop()
    lines = [part + NL for part in parts]
    if last:
        lines.append(last)
    return lines


def _matches(img: list[bytes], patched: bytearray, pre: list[bytes], lno: int) -> bool:
    m = len(pre)
    if m and img[lno] != pre[0]:
        return False
    if img[lno : lno + m] != pre:
        return False
    return patched.find(1, lno, lno + m) < 0


def find_pos(img: list[bytes], patched: bytearray, hunk: Hunk) -> int:
    """Where the hunk's preimage applies in ``img``, or -1."""
    pre = hunk.old_lines
    m = len(pre)
    nimg = len(img)
    if m > nimg:
        return -1
    match_beginning = hunk.old_start <= 1
    match_end = hunk.trailing == 0
    if match_beginning:
        if match_end and m != nimg:
            return -1
        return 0 if _matches(img, patched, pre, 0) else -1
    if match_end:
        lno = nimg - m
        return lno if _matches(img, patched, pre, lno) else -1
    line = hunk.new_start - 1 if hunk.new_start else 0
    line = min(line, nimg)
    last = nimg - m
    backwards = forwards = line
    if line <= last and _matches(img, patched, pre, line):
        return line
    first = pre[0]
    while backwards > 0 or forwards < nimg:
        if forwards < nimg:
            forwards += 1
            if forwards <= last and img[forwards] == first and _matches(img, patched, pre, forwards):
                return forwards
        if backwards > 0:
            backwards -= 1
            if backwards <= last and img[backwards] == first and _matches(img, patched, pre, backwards):
                return backwards
    return -1


def _show(line: bytes | None) -> str | None:
    if line is None:
        return None
    text = line[:-1] if line.endswith(NL) else line
    shown = text.decode("utf-8", errors="replace")
    return shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "…"


def describe_conflict(img: list[bytes], hunk: Hunk, number: int) -> HunkConflict:
    """Explain a hunk that found no place: the first line at its expected position that differs."""
    pre = hunk.old_lines
    if hunk.old_start <= 1:
        at = 0
    elif hunk.trailing == 0:
        at = max(len(img) - len(pre), 0)
    else:
        at = min(max(hunk.new_start - 1, 0), len(img))
    for k, expected in enumerate(pre):
        found = img[at + k] if at + k < len(img) else None
        if found != expected:
            return HunkConflict(number, at + k + 1, _show(expected) or "", _show(found))
    if hunk.trailing == 0 and at + len(pre) < len(img):
        return HunkConflict(number, at + len(pre) + 1, "<end of file>", _show(img[at + len(pre)]))
    if hunk.old_start <= 1 and hunk.trailing == 0 and len(pre) != len(img):
        return HunkConflict(number, 1, "<whole file>", _show(img[0]) if img else None)
    first = pre[0] if pre else None
    return HunkConflict(number, at + 1, _show(first) or "", "<already changed by an earlier hunk>")


def apply_hunks(data: bytes, hunks: list[Hunk]) -> tuple[list[bytes], list[HunkConflict]]:
    """Apply every hunk in order; return the new lines and the hunks that found no place."""
    img = split_lines(data)
    patched = bytearray(len(img))
    conflicts: list[HunkConflict] = []
    for number, hunk in enumerate(hunks, 1):
        pos = find_pos(img, patched, hunk)
        if pos < 0:
            conflicts.append(describe_conflict(img, hunk, number))
            continue
        end = pos + len(hunk.old_lines)
        img[pos:end] = hunk.new_lines
        patched[pos:end] = b"\x01" * len(hunk.new_lines)
    return img, conflicts
