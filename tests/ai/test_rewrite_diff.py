"""Rewrite answers → replacement text → git-style diffs that ``git apply`` accepts and that give the intended file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app.services.ai.rewrite import extract_code, replace_range, unified_diff


def git_apply(tmp_path: Path, name: str, old: bytes, diff: str) -> bytes:
    """Apply ``diff`` with real git to a repo holding ``name`` = ``old``; return the new bytes."""
    repo = tmp_path / "repo"
    target = repo / name
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    target.write_bytes(old)
    (tmp_path / "change.diff").write_bytes(diff.encode())
    result = subprocess.run(
        ["git", "apply", "--check", "-v", str(tmp_path / "change.diff")], cwd=repo, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    subprocess.run(["git", "apply", str(tmp_path / "change.diff")], cwd=repo, check=True)
    return target.read_bytes()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("```python\nx = 1\n```", "x = 1"),
        ("```\nx = 1\n```", "x = 1"),
        (
            "Sure! Here is the rewritten code:\n\n```py\ndef f():\n    return 2\n```\n\nThis version is faster.",
            "def f():\n    return 2",
        ),
        ("~~~js\nlet a = 1;\n~~~", "let a = 1;"),
        ("````md\n```python\nx\n```\n````", "```python\nx\n```"),
        ("<think>the user wants a constant</think>\n```python\nX = 3\n```", "X = 3"),
        ("```python\ntruncated = True\nstill", "truncated = True\nstill"),
        ("x = 1\ny = 2\n", "x = 1\ny = 2"),
        ("Here's the updated code:\nx = 1\ny = 2\n\nNote: I renamed nothing.", "x = 1\ny = 2"),
        ("Short intro\n```\na\n```\nand the real one\n```python\nlonger = 1\nlines = 2\n```", "longer = 1\nlines = 2"),
        ("```python\r\nx = 1\r\n```\r\n", "x = 1"),
        ("", ""),
    ],
)
def test_extract_code(answer: str, expected: str) -> None:
    assert extract_code(answer) == expected


def test_replace_range_basic_and_reindent() -> None:
    original = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 2\n"
    assert replace_range(original, 2, 3, "def f(self):\n    return 10") == (
        "class A:\n    def f(self):\n        return 10\n\n    def g(self):\n        return 2\n"
    )
    assert replace_range(original, 3, 3, "        return 11") == original.replace("return 1\n", "return 11\n")


def test_replace_range_keeps_crlf_and_missing_final_newline() -> None:
    original = "a\r\nb\r\nc"
    assert replace_range(original, 2, 3, "B\nC") == "a\r\nB\r\nC"
    assert replace_range(original, 1, 1, "A1\nA2\n") == "A1\r\nA2\r\nb\r\nc"
    assert replace_range("x\ny\n", 2, 2, "") == "x\n"
    assert replace_range("x\ny", 2, 2, "") == "x"
    assert replace_range("", 1, 0, "new\n") == "new\n"


CASES = {
    "modify middle": ("a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n", 5, 6, "E\nF\nF2"),
    "first line": ("one\ntwo\nthree\n", 1, 1, "ONE"),
    "last line without newline": ("one\ntwo\nthree", 3, 3, "THREE\nFOUR"),
    "delete last unterminated line": ("one\ntwo\nthree", 3, 3, ""),
    "crlf file": ("l1\r\nl2\r\nl3\r\nl4\r\n", 2, 3, "L2\nL3\nL3b"),
    "crlf without final newline": ("l1\r\nl2\r\nl3", 3, 3, "L3"),
    "two hunks far apart": (
        "\n".join(f"line {i}" for i in range(40)) + "\n",
        3,
        30,
        "\n".join(f"line {i}" if i not in (4, 28) else f"LINE {i}" for i in range(2, 30)),
    ),
    "insert into empty file": ("", 1, 0, "hello\nworld"),
    "tabs and unicode": ("\tfür x in y:\n\t\tpass\n", 2, 2, "\t\tprint('✓')"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_diff_applies_with_git(tmp_path: Path, case: str) -> None:
    original, start, end, replacement = CASES[case]
    expected = replace_range(original, start, end, replacement)
    diff = unified_diff("src/pkg/mod.py", original, expected)
    assert diff.startswith(
        "diff --git a/src/pkg/mod.py b/src/pkg/mod.py\n--- a/src/pkg/mod.py\n+++ b/src/pkg/mod.py\n@@ "
    )
    assert git_apply(tmp_path, "src/pkg/mod.py", original.encode(), diff) == expected.encode()


def test_no_newline_markers_and_hunk_headers() -> None:
    diff = unified_diff("f.txt", "one\ntwo", "one\ntwo\n")
    assert diff.endswith("@@ -1,2 +1,2 @@\n one\n-two\n\\ No newline at end of file\n+two\n")
    assert unified_diff("f.txt", "same\n", "same\n") == ""
    assert "@@ -0,0 +1 @@\n+x\n" in unified_diff("f.txt", "", "x\n")


def test_diff_of_odd_paths_applies(tmp_path: Path) -> None:
    for name in ("dir with space/file name.py", 'quote"d.txt'):
        diff = unified_diff(name, "a\n", "b\n")
        assert git_apply(tmp_path / name.replace("/", "_").replace('"', "q"), name, b"a\n", diff) == b"b\n"


def test_diff_of_a_big_file_is_local(tmp_path: Path) -> None:
    original = "".join(f"value_{i} = {i}\n" for i in range(50_000))
    new = replace_range(original, 25_000, 25_001, "value_24999 = 'changed'\nvalue_25000 = 'changed'")
    diff = unified_diff("big.py", original, new)
    assert diff.count("\n@@ ") == 1 and len(diff) < 1000
    assert git_apply(tmp_path, "big.py", original.encode(), diff) == new.encode()
