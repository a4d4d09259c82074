"""validate() agrees with ``git apply --check``, and apply() with ``git apply``, on diffs from real histories.

Two corpora: a generated history (CRLF, missing final newlines, empty files, renames, deletions, creations,
mode changes, quoted names, repeated lines), with diffs between many commit pairs in several formats and
also applied to the wrong base; and this repository's own history.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.errors import DomainError
from app.services.files import patches
from tests.support import git_history
from tests.support.files import GIT_ENV, files_of, git

REPO = Path(__file__).resolve().parents[2]
FORMATS = [[], ["--no-renames"], ["-U1"], ["-U0"], ["-U6", "--full-index"], ["-M50%"]]


@dataclass
class Tally:
    cases: int = 0
    both_ok: int = 0
    both_refused: int = 0
    mismatches: list[str] = field(default_factory=list)


class Checker:
    """Extracts commits once and compares both appliers on fresh copies."""

    def __init__(self, repo: Path, work: Path) -> None:
        self.repo = repo
        self.work = work
        self.trees: dict[str, Path] = {}
        self.tally = Tally()
        self.env = {**GIT_ENV, "GIT_CEILING_DIRECTORIES": str(work)}

    def tree(self, commit: str) -> Path:
        if commit not in self.trees:
            dest = self.work / "trees" / commit
            dest.mkdir(parents=True)
            archive = git(self.repo, "archive", "--format=tar", commit).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
            self.trees[commit] = dest
        return self.trees[commit]

    def diff(self, a: str, b: str, fmt: list[str]) -> tuple[bytes, list[str]]:
        """The diff from ``a`` to ``b``, and every path it names (both sides of renames)."""
        names = git(self.repo, "diff", "--no-renames", "--name-only", "-z", a, b).stdout
        return git(self.repo, "diff", *fmt, a, b).stdout, [n.decode() for n in names.split(b"\0") if n]

    def compare(self, change: tuple[bytes, list[str]], base: Path, label: str) -> None:
        diff, touched = change
        if not diff.strip():
            return
        self.tally.cases += 1
        case = self.work / "cases" / str(self.tally.cases)
        ours, theirs = case / "ours", case / "git"
        for copy in (ours, theirs):  # only the paths the diff names: both appliers look at nothing else
            copy.mkdir(parents=True)
            for name in touched:
                if (base / name).is_file():
                    (copy / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(base / name, copy / name)
        diff_file = case / "change.diff"
        diff_file.write_bytes(diff)
        text = diff.decode("utf-8", errors="surrogateescape")
        git_ok = self._git(theirs, "--check", diff_file)
        try:
            result = patches.validate(ours, text)
            ours_ok, why = result.ok, [f.error or f.conflicts for f in result.files if not f.applies]
        except DomainError as exc:
            assert 400 <= exc.status < 500
            ours_ok, why = False, [exc.detail]
        if ours_ok != git_ok:
            self.tally.mismatches.append(f"{label}: git {git_ok}, ours {ours_ok} {why!r:.300}")
        elif ours_ok:
            self.tally.both_ok += 1
            assert self._git(theirs, "", diff_file)
            applied = patches.apply(ours, text)
            assert len(applied.files) == len(result.files)
            if files_of(ours) != files_of(theirs):
                self.tally.mismatches.append(f"{label}: trees differ after apply")
        else:
            self.tally.both_refused += 1
        shutil.rmtree(case)

    def _git(self, cwd: Path, flag: str, diff_file: Path) -> bool:
        args = ["git", "apply", *([flag] if flag else []), str(diff_file)]
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True).returncode == 0


def test_agreement_with_git_on_a_generated_history(tmp_path: Path) -> None:
    commits = git_history.build(tmp_path / "repo", seed=20240611, commits=45)
    checker = Checker(tmp_path / "repo", tmp_path / "work")
    rng = random.Random(5)
    pairs = [(commits[i], commits[i + 1]) for i in range(len(commits) - 1)]
    pairs += [tuple(rng.sample(commits, 2)) for _ in range(30)]  # either direction
    for index, (a, b) in enumerate(pairs):
        fmt = FORMATS[index % len(FORMATS)]
        diff = checker.diff(a, b, fmt)
        checker.compare(diff, checker.tree(a), f"{a[:7]}..{b[:7]} {fmt}")
        wrong = rng.choice([c for c in commits if c != a])
        checker.compare(diff, checker.tree(wrong), f"{a[:7]}..{b[:7]} {fmt} on {wrong[:7]}")
    tally = checker.tally
    assert not tally.mismatches, "\n".join(tally.mismatches)
    assert tally.cases >= 140 and tally.both_ok >= 60 and tally.both_refused >= 20, tally


def test_agreement_with_git_on_this_repository(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = git(REPO, "rev-list", "--max-count=40", "--first-parent", "HEAD", check=False)
    commits = listed.stdout.decode().split()[::-1]
    if len(commits) < 3:
        pytest.skip("this repository has too little history yet")
    checker = Checker(REPO, tmp_path / "work")
    step = max(1, len(commits) // 12)
    pairs = [(commits[i], commits[min(i + step, len(commits) - 1)]) for i in range(0, len(commits) - 1, step)]
    pairs.append((commits[0], commits[-1]))
    pairs.append((commits[-1], commits[len(commits) // 2]))
    for index, (a, b) in enumerate(pairs):
        fmt = FORMATS[index % len(FORMATS)]
        diff = checker.diff(a, b, fmt)
        if any(mode in diff[0] for mode in (b" 120000", b" 160000")):
            continue  # symlink and submodule entries are refused on purpose (git would apply them)
        checker.compare(diff, checker.tree(a), f"{a[:7]}..{b[:7]} {fmt}")
        checker.compare(diff, checker.tree(b), f"{a[:7]}..{b[:7]} {fmt} on {b[:7]}")
    tally = checker.tally
    assert not tally.mismatches, "\n".join(tally.mismatches)
    assert tally.both_ok >= 2, tally
