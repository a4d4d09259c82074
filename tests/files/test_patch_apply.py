"""Patch edge cases beside git apply, base hashes, conflicts, and all-or-nothing rollback."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from app.errors import BadRequest, Conflict, DomainError
from app.services.files import patches
from app.services.files.patches import commit as commit_module
from tests.support.files import GIT_ENV, files_of, snapshot


def make_tree(top: Path, content: dict[str, bytes]) -> Path:
    top.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return top


def git_diff(tmp: Path, before: dict[str, bytes], after: dict[str, bytes], *args: str) -> str:
    """The diff git writes between two trees (via a scratch repository)."""
    repo = tmp / "scratch"
    subprocess.run(["git", "init", "-q", str(repo)], env=GIT_ENV, check=True)
    make_tree(repo, before)
    for cmd in (["add", "-A"], ["commit", "-qm", "a", "--allow-empty"]):
        subprocess.run(["git", *cmd], cwd=repo, env=GIT_ENV, check=True)
    for name in before:
        (repo / name).unlink()
    make_tree(repo, after)
    subprocess.run(["git", "add", "-A"], cwd=repo, env=GIT_ENV, check=True)
    out = subprocess.run(["git", "diff", "--cached", *args], cwd=repo, env=GIT_ENV, capture_output=True, check=True)
    return out.stdout.decode()


def beside_git(tmp: Path, before: dict[str, bytes], diff: str) -> dict[str, tuple[bytes, bool]]:
    """Apply ``diff`` with us and with git to copies of ``before``; both must agree. Returns our result."""
    ours, theirs = make_tree(tmp / "ours", before), make_tree(tmp / "git", before)
    (tmp / "d.diff").write_bytes(diff.encode())
    env = {**GIT_ENV, "GIT_CEILING_DIRECTORIES": str(tmp)}
    git_ok = subprocess.run(["git", "apply", str(tmp / "d.diff")], cwd=theirs, env=env, capture_output=True)
    assert git_ok.returncode == 0, git_ok.stderr
    assert patches.validate(ours, diff).ok
    patches.apply(ours, diff)
    assert files_of(ours) == files_of(theirs)
    return files_of(ours)


CRLF = b"one\r\ntwo\r\nthree\r\n"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param({"w.txt": CRLF}, {"w.txt": b"one\r\nTWO\r\nthree\r\nfour\r\n"}, id="crlf"),
        pytest.param({"m.txt": b"lf\nmixed\r\nend"}, {"m.txt": b"lf\nmixed!\r\nend\n"}, id="mixed-endings"),
        pytest.param({"n.txt": b"a\nb"}, {"n.txt": b"a\nb\n"}, id="add-final-newline"),
        pytest.param({"n.txt": b"a\nb\n"}, {"n.txt": b"a\nb"}, id="drop-final-newline"),
        pytest.param({"n.txt": b"a\nb"}, {"n.txt": b"a\nc"}, id="no-newline-both-sides"),
        pytest.param({"e.txt": b""}, {"e.txt": b"now\n"}, id="fill-empty"),
        pytest.param({"e.txt": b"gone\n"}, {"e.txt": b""}, id="empty-out"),
        pytest.param({}, {"new/deep/e.txt": b""}, id="create-empty"),
        pytest.param({"e.txt": b""}, {}, id="delete-empty"),
        pytest.param({}, {"a/b/c.txt": b"x\ny\n"}, id="create"),
        pytest.param({"d/x.txt": b"x\n", "keep": b"k\n"}, {"keep": b"k\n"}, id="delete-and-prune-dir"),
        pytest.param({"old.txt": b"same\n" * 20}, {"new/place.txt": b"same\n" * 20}, id="rename"),
        pytest.param(
            {"old.txt": b"".join(b"line %d\n" % i for i in range(30))},
            {"new.txt": b"".join(b"line %d\n" % i for i in range(30) if i != 7)},
            id="rename-and-edit",
        ),
        pytest.param(
            {"h.txt": b"".join(b"%d\n" % i for i in range(200))},
            {"h.txt": b"".join(b"%d\n" % (i * (i % 37 != 0)) for i in range(200))},
            id="several-hunks",
        ),
        pytest.param(
            {"r.txt": b"}\n" * 10 + b"x\n" + b"}\n" * 10}, {"r.txt": b"}\n" * 10 + b"y\n" + b"}\n" * 9}, id="repeats"
        ),
        pytest.param(
            {"u.txt": "ünï\n".encode(), "sp ace.txt": b"a\n"},
            {"u.txt": "ü\n".encode(), "sp ace.txt": b"b\n"},
            id="names",
        ),
    ],
)
def test_edge_cases_match_git(tmp_path: Path, before: dict[str, bytes], after: dict[str, bytes]) -> None:
    diff = git_diff(tmp_path, before, after, "-M")
    result = beside_git(tmp_path, before, diff)
    assert {name: data for name, (data, _x) in result.items()} == after


def test_mode_change_only(tmp_path: Path) -> None:
    diff = "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n"
    result = beside_git(tmp_path, {"run.sh": b"#!/bin/sh\n"}, diff)
    assert result["run.sh"] == (b"#!/bin/sh\n", True)
    back = "diff --git a/run.sh b/run.sh\nold mode 100755\nnew mode 100644\n"
    patches.apply(tmp_path / "ours", back)
    assert not (tmp_path / "ours" / "run.sh").stat().st_mode & 0o111


def test_new_executable_file(tmp_path: Path) -> None:
    diff = "diff --git a/x.sh b/x.sh\nnew file mode 100755\n--- /dev/null\n+++ b/x.sh\n@@ -0,0 +1 @@\n+echo\n"
    assert beside_git(tmp_path, {}, diff)["x.sh"] == (b"echo\n", True)


def test_plain_diff_u(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", {"f.c": b"int x;\nint y;\n", "gone.c": b"bye\n"})
    make_tree(tmp_path / "b", {"f.c": b"int x;\nint z;\n", "born.c": b"hi\n"})
    out = subprocess.run(["diff", "-ruN", "a", "b"], cwd=tmp_path, capture_output=True)
    diff = out.stdout.decode()
    assert "--- a/f.c\t" in diff
    result = beside_git(tmp_path / "case", {"f.c": b"int x;\nint y;\n", "gone.c": b"bye\n"}, diff)
    assert result == {"f.c": (b"int x;\nint z;\n", False), "born.c": (b"hi\n", False)}


def test_plain_diff_without_directories(tmp_path: Path) -> None:
    make_tree(tmp_path, {"f.txt.orig": b"a\nb\n", "f.txt": b"a\nB\n"})
    diff = subprocess.run(["diff", "-u", "f.txt.orig", "f.txt"], cwd=tmp_path, capture_output=True).stdout.decode()
    assert beside_git(tmp_path / "case", {"f.txt": b"a\nb\n"}, diff)["f.txt"][0] == b"a\nB\n"


def test_same_file_twice_and_offsets(tmp_path: Path) -> None:
    base = {"f": b"".join(b"%d\n" % i for i in range(1, 21))}
    first = "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n 2\n-3\n+three\n 4\n"
    second = "--- a/f\n+++ b/f\n@@ -12,3 +12,3 @@\n 12\n-13\n+thirteen\n 14\n"
    shifted = "--- a/f\n+++ b/f\n@@ -5,3 +5,3 @@\n 16\n-17\n+seventeen\n 18\n"
    result = beside_git(tmp_path, base, first + second + shifted)
    assert b"three\n" in result["f"][0] and b"thirteen\n" in result["f"][0] and b"seventeen\n" in result["f"][0]


def test_swap_by_renames(tmp_path: Path) -> None:
    diff = (
        "diff --git a/a b/b\nsimilarity index 100%\nrename from a\nrename to b\n"
        "diff --git a/b b/a\nsimilarity index 100%\nrename from b\nrename to a\n"
    )
    result = beside_git(tmp_path, {"a": b"A\n", "b": b"B\n"}, diff)
    assert result == {"a": (b"B\n", False), "b": (b"A\n", False)}


def test_conflicts_are_reported_and_nothing_written(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ws", {"a.txt": b"1\n2\n3\n4\n5\n6\n7\n", "b.txt": b"x\n"})
    diff = (
        "--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-x\n+y\n"
        "--- a/a.txt\n+++ b/a.txt\n@@ -2,3 +2,3 @@\n 2\n-THREE\n+3!\n 4\n"
        "--- /dev/null\n+++ b/b.txt\n@@ -0,0 +1 @@\n+z\n"
        "--- a/missing.txt\n+++ b/missing.txt\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    )
    result = patches.validate(root, diff)
    assert not result.ok
    assert [f.applies for f in result.files] == [True, False, False, False]
    conflict = result.files[1].conflicts[0]
    assert (conflict.hunk, conflict.line, conflict.expected, conflict.found) == (1, 3, "THREE", "3")
    assert "already exists" in (result.files[2].error or "")
    assert "does not exist" in (result.files[3].error or "")
    before = snapshot(root)
    with pytest.raises(Conflict) as caught:
        patches.apply(root, diff)
    assert caught.value.status == 409 and caught.value.code == "patch_conflict"
    assert len(caught.value.extra["files"]) == 4
    assert snapshot(root) == before


def test_base_hashes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ws", {"a.txt": b"a\n"})
    diff = "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+b\n"
    checked = patches.validate(root, diff)
    base = checked.files[0].base_sha256
    assert base is not None
    before = snapshot(root)
    with pytest.raises(Conflict) as caught:
        patches.apply(root, diff, {"a.txt": "0" * 64})
    assert caught.value.code == "base_mismatch"
    assert caught.value.extra["mismatches"] == [{"path": "a.txt", "expected": "0" * 64, "actual": base}]
    with pytest.raises(BadRequest):
        patches.apply(root, diff, {"other.txt": base})
    assert snapshot(root) == before
    applied = patches.apply(root, diff, {"a.txt": base})
    assert applied.files[0].base_sha256 == base and applied.files[0].size == 2
    assert (root / "a.txt").read_bytes() == b"b\n"


MULTI = {f"pkg/m{i}.txt": b"".join(b"%d\n" % k for k in range(12)) for i in range(4)}
MULTI |= {"gone.txt": b"bye\n", "pkg/extra.txt": b"extra\n"}


def _multi_diff() -> str:
    parts = [f"--- a/pkg/m{i}.txt\n+++ b/pkg/m{i}.txt\n@@ -4,3 +4,3 @@\n 3\n-4\n+four\n 5\n" for i in range(4)]
    parts.append("--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n")
    parts.append("--- /dev/null\n+++ b/new/dir/born.txt\n@@ -0,0 +1 @@\n+hi\n")
    parts.append("diff --git a/pkg/extra.txt b/moved/extra.txt\nrename from pkg/extra.txt\nrename to moved/extra.txt\n")
    return "".join(parts)


def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str, nth: int, error: int = errno.EIO) -> list[int]:
    real = getattr(os, name)
    calls: list[int] = []

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == nth:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(commit_module.os, name, failing)
    return calls


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("rename", errno.EIO),
        ("write", errno.ENOSPC),
        ("fdatasync", errno.EIO),
        ("link", errno.EIO),
        ("mkdir", errno.EACCES),
    ],
)
def test_any_failure_leaves_the_tree_exactly_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, error: int
) -> None:
    diff = _multi_diff()
    for nth in range(1, 12):
        root = make_tree(tmp_path / f"{call}{nth}", MULTI)
        before = snapshot(root)
        with monkeypatch.context() as patched:
            calls = _fail_on(patched, call, nth, error)
            try:
                patches.apply(root, diff)
            except DomainError as exc:
                assert 400 <= exc.status < 500
                assert snapshot(root) == before, (call, nth)
                continue
        assert len(calls) < nth, (call, nth)  # no failure was injected: the apply went through
        assert (root / "moved" / "extra.txt").read_bytes() == b"extra\n"
        assert all((root / "pkg" / f"m{i}.txt").read_bytes().count(b"four") == 1 for i in range(4))
        assert not (root / "gone.txt").exists() and not any(n.startswith(".codehub-") for n in os.listdir(root))
        break


def test_hostile_diffs_change_nothing(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ws", {"a.txt": b"a\n", "lib/x.py": b"x\n"})
    os.symlink("../outside", root / "out")
    (tmp_path / "outside").mkdir()
    before = snapshot(tmp_path)
    hostile = {
        "escape": "--- a/../x\n+++ b/../x\n@@ -0,0 +1 @@\n+x\n",
        "escape-deep": "--- /dev/null\n+++ b/lib/../../../etc/cron.d/x\n@@ -0,0 +1 @@\n+x\n",
        "absolute": "--- /dev/null\n+++ /etc/passwd\n@@ -0,0 +1 @@\n+x\n",
        "absolute-after-prefix": "--- /dev/null\n+++ b//etc/passwd\n@@ -0,0 +1 @@\n+x\n",
        "git-absolute": "diff --git a/a.txt b//tmp/a.txt\n--- a/a.txt\n+++ b//tmp/a.txt\n@@ -1 +1 @@\n-a\n+b\n",
        "quoted-escape": '--- /dev/null\n+++ "b/\\056\\056/x"\n@@ -0,0 +1 @@\n+x\n',
        "quoted-nul": '--- /dev/null\n+++ "b/x\\000y"\n@@ -0,0 +1 @@\n+x\n',
        "nul": "--- /dev/null\n+++ b/x\x00y\n@@ -0,0 +1 @@\n+x\n",
        "dot-git": "--- /dev/null\n+++ b/.git/hooks/pre-commit\n@@ -0,0 +1 @@\n+x\n",
        "dot-git-case": "--- /dev/null\n+++ b/sub/.GIT/config\n@@ -0,0 +1 @@\n+x\n",
        "rename-escape": "diff --git a/a.txt b/z\nrename from a.txt\nrename to ../z\n",
        "inconsistent": "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/../../evil\n@@ -1 +1 @@\n-a\n+b\n",
        "binary": "diff --git a/a.txt b/a.txt\nindex 1..2 100644\nGIT binary patch\nliteral 1\nIcmZo*00001\n\n",
        "binary-differ": "diff --git a/a.bin b/a.bin\nindex 1..2 100644\nBinary files a/a.bin and b/a.bin differ\n",
        "binary-plain": "Binary files a/x and b/x differ\n",
        "symlink": "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n",
        "submodule": "diff --git a/s b/s\nnew file mode 160000\n--- /dev/null\n+++ b/s\n@@ -0,0 +1 @@\n+Subproject 1\n",
        "copy": "diff --git a/a.txt b/c.txt\ncopy from a.txt\ncopy to c.txt\n",
        "bad-mode": "diff --git a/a.txt b/a.txt\nold mode 100644\nnew mode 104755\n",
        "no-files": "hello\nworld\n",
        "empty": "",
        "hunk-first": "@@ -1 +1 @@\n-a\n+b\n",
        "bad-hunk-header": "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1\n-a\n+b\n",
        "short-hunk": "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n-a\n+b\n",
        "long-hunk": "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+b\n+c\n",
        "huge-counts": "--- a/a.txt\n+++ b/a.txt\n@@ -1,999999999 +1,999999999 @@\n-a\n+b\n",
        "context-only": "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n a\n",
        "garbage-line": "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n-a\n*b\n+c\n",
        "misplaced-marker": "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n\\ No newline at end of file\n-a\n+b\n",
        "new-with-old-lines": "diff --git a/n b/n\nnew file mode 100644\n--- /dev/null\n+++ b/n\n@@ -1 +1 @@\n-a\n+b\n",
        "no-name": "diff --git a/x b/y\nnew file mode 100644\n",
        "no-changes": "diff --git a/a.txt b/a.txt\nindex 1..2 100644\n",
        "both-dev-null": "--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+x\n",
        "unterminated-quote": '--- /dev/null\n+++ "b/x\n@@ -0,0 +1 @@\n+x\n',
        "surrogate": "--- /dev/null\n+++ b/\udc80\n@@ -0,0 +1 @@\n+x\n",
        "through-link": "--- /dev/null\n+++ b/out/evil\n@@ -0,0 +1 @@\n+x\n",
        "through-link-modify": "--- a/out/secret\n+++ b/out/secret\n@@ -1 +1 @@\n-a\n+b\n",
    }
    refused = 0
    for name, diff in hostile.items():
        for run in (patches.validate, patches.apply):
            try:
                outcome = run(root, diff)
            except DomainError as exc:
                assert 400 <= exc.status < 500, (name, exc)
                assert exc.detail, name
                refused += 1
                continue
            assert run is patches.validate and not outcome.ok, (name, outcome)  # type: ignore[attr-defined]
        assert snapshot(tmp_path) == before, name
    assert refused >= 2 * len(hostile) - 2


def test_limits(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ws", {"a.txt": b"".join(b"%d\n" % i for i in range(100))})
    many = "".join(f"--- a/a.txt\n+++ b/a.txt\n@@ -{i},1 +{i},1 @@\n-{i - 1}\n+x\n" for i in range(2, 98, 3))
    with pytest.raises(DomainError) as caught:
        patches.validate(root, many, limits=patches.PatchLimits(max_patch_hunks=5))
    assert caught.value.status == 413
    with pytest.raises(DomainError) as caught:
        patches.validate(root, many, limits=patches.PatchLimits(max_patch_bytes=1024))
    assert caught.value.status == 413
    with pytest.raises(DomainError) as caught:
        patches.validate(root, many, limits=patches.PatchLimits(max_patch_files=3))
    assert caught.value.status == 413
    grow = "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,3 @@\n-0\n+" + "y" * 3000 + "\n+z\n 1\n"
    with pytest.raises(DomainError) as caught:
        patches.apply(root, grow, limits=patches.PatchLimits(max_file_bytes=2048))
    assert caught.value.status == 413
    assert (root / "a.txt").read_bytes().startswith(b"0\n1\n")


def test_validate_then_apply_reuses_the_parse_safely(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ws", {})
    diff = "--- a/new.txt\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hello\n"  # plain diff: creation is guessed
    assert patches.validate(root, diff).files[0].operation == "create"
    assert patches.apply(root, diff).files[0].operation == "create"
    assert (root / "new.txt").read_bytes() == b"hello\n"
    again = patches.validate(root, diff)
    assert not again.ok and again.files[0].operation == "modify"
