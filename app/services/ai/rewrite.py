"""Turning a model's rewrite answer into a git-style unified diff the patch API accepts.

``extract_code`` pulls the replacement out of the answer (a fenced block with or without a language,
or plain output with chatter stripped; ``<think>`` sections dropped). ``replace_range`` splices it into the
file keeping the file's line endings (CRLF stays CRLF), its final-newline state and, when the model dropped
it, the selection's indentation. ``unified_diff`` renders the change like ``git diff`` (``a/``/``b/``
prefixes, ``\\ No newline at end of file`` markers) so ``git apply`` and the hub's patch validator take it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from difflib import SequenceMatcher

from app.services.ai.context import split_lines

Opcode = tuple[str, int, int, int, int]  # difflib: tag, a from, a to, b from, b to

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)\s*", re.DOTALL | re.IGNORECASE)
_FENCE_OPEN = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$")
_CHATTER_HEAD = re.compile(
    r"^(sure|certainly|of course|okay|ok|here(?:'s| is| are)|below is|the (?:rewritten|updated|modified|"
    r"refactored|new) (?:code|version|lines?))\b.*$",
    re.IGNORECASE,
)
_CHATTER_TAIL = re.compile(
    r"^(note|this (?:version|code|change|rewrite)|i (?:have|made|changed|replaced)|explanation|changes:|"
    r"the (?:above|changes?)|let me know|hope)\b",
    re.IGNORECASE,
)


def _fenced_blocks(lines: list[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening.group(1)
        close = re.compile(rf"^[ \t]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append(body)  # an unterminated fence (answer cut at max_tokens) runs to the end
        i += 1
    return blocks


def extract_code(answer: str) -> str:
    """The replacement code inside a model's answer (no trailing newline); "" when there is none."""
    text = _THINK.sub("", answer.replace("\r\n", "\n"))
    lines = text.split("\n")
    blocks = _fenced_blocks(lines)
    if blocks:
        body = max(blocks, key=lambda block: sum(len(line) for line in block))
    else:
        body = lines
        while body and (not body[0].strip() or _CHATTER_HEAD.match(body[0].strip())):
            body = body[1:]
        for i in range(len(body) - 1, 0, -1):
            if not body[i - 1].strip() and _CHATTER_TAIL.match(body[i].strip()):
                body = body[: i - 1]
                break
    while body and not body[-1].strip():
        body = body[:-1]
    return "\n".join(body)


def _indent(lines: list[str]) -> str:
    texts = [line.rstrip("\r\n") for line in lines if line.strip()]
    if not texts:
        return ""
    prefix = texts[0][: len(texts[0]) - len(texts[0].lstrip())]
    for text in texts[1:]:
        while prefix and not text.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def replace_range(original: str, start: int, end: int, replacement: str) -> str:
    """``original`` with lines ``start``..``end`` (1-based, inclusive) replaced by ``replacement``.

    Line endings follow the replaced lines (else the file); a last line without a newline stays without;
    leading/trailing blank lines the selection did not have are dropped; if the model returned the code
    without the selection's common indentation, it is re-indented.
    """
    lines = split_lines(original)
    selected = lines[start - 1 : end]
    reference = selected or lines
    crlf = sum(line.endswith("\r\n") for line in reference)
    eol = "\r\n" if crlf and crlf * 2 >= sum(line.endswith("\n") for line in reference) else "\n"
    new = replacement.replace("\r\n", "\n").split("\n") if replacement else []
    if new and not new[-1]:
        new.pop()  # a final newline ends the last line; it is not an extra blank line
    if selected and selected[0].strip():
        while new and not new[0].strip():
            new = new[1:]
    if selected and selected[-1].strip():
        while new and not new[-1].strip():
            new = new[:-1]
    indent = _indent(selected)
    if indent and new and not _indent(new) and any(line.strip() for line in new):
        new = [indent + line if line.strip() else line for line in new]
    no_final_newline = bool(selected) and end >= len(lines) and not selected[-1].endswith("\n")
    spliced = [line + eol for line in new]
    if spliced and no_final_newline:
        spliced[-1] = new[-1]
    elif not spliced and no_final_newline and start > 1:
        lines[start - 2] = lines[start - 2].rstrip("\r\n")  # deleting the unterminated last line
    return "".join(lines[: start - 1] + spliced + lines[end:])


def _quote(path: str) -> str:
    """A path as git writes it in headers: C-quoted only when it holds quotes, backslashes or controls."""
    if not re.search(r'["\\\x00-\x1f\x7f]', path):
        return path
    table = {'"': '\\"', "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    body = "".join(table.get(c, f"\\{ord(c):03o}" if ord(c) < 32 or ord(c) == 127 else c) for c in path)
    return f'"{body}"'


def _range(start: int, stop: int) -> str:
    """``start,count`` of a hunk side, the way GNU diff and git write it."""
    length = stop - start
    begin = start + 1
    if length == 1:
        return str(begin)
    if not length:
        begin -= 1
    return f"{begin},{length}"


def _grouped(codes: list[Opcode], n: int) -> Iterator[list[Opcode]]:
    if codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = tag, max(i1, i2 - n), i2, max(j1, j2 - n), j2
    if codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n)
    group: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * n:
            group.append((tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n)))
            yield group
            group = []
            i1, j1 = max(i1, i2 - n), max(j1, j2 - n)
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def _opcodes(a: list[str], b: list[str]) -> list[Opcode]:
    """Opcodes of a line diff; the common head and tail are cut first so big files stay cheap."""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    middle = SequenceMatcher(None, a[head : len(a) - tail], b[head : len(b) - tail], autojunk=False)
    codes: list[Opcode] = [
        (tag, i1 + head, i2 + head, j1 + head, j2 + head) for tag, i1, i2, j1, j2 in middle.get_opcodes()
    ]
    if head:
        codes.insert(0, ("equal", 0, head, 0, head))
    if tail:
        codes.append(("equal", len(a) - tail, len(a), len(b) - tail, len(b)))
    return codes


def unified_diff(path: str, old: str, new: str, context: int = 3) -> str:
    """A git-style unified diff of one file changing from ``old`` to ``new``; "" when they are equal."""
    a, b = split_lines(old), split_lines(new)
    if a == b:
        return ""
    quoted_a, quoted_b = _quote("a/" + path), _quote("b/" + path)
    out = [f"diff --git {quoted_a} {quoted_b}\n", f"--- {quoted_a}\n", f"+++ {quoted_b}\n"]

    def emit(prefix: str, line: str) -> None:
        out.append(prefix + line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")

    for group in _grouped(_opcodes(a, b), context):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for line in a[i1:i2]:
                    emit(" ", line)
                continue
            for line in a[i1:i2]:
                emit("-", line)
            for line in b[j1:j2]:
                emit("+", line)
    return "".join(out)
