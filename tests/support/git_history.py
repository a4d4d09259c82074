"""A random git history for patch tests: edits, CRLF files, missing final newlines, empty files,
creations, deletions, renames, mode changes, odd names and many repeated lines (ambiguous context)."""

from __future__ import annotations

import random
from pathlib import Path

from tests.support.files import git

NAMES = [
    "main.py",
    "lib/util.py",
    "lib/deep/nested/mod.py",
    "docs/guide.md",
    "with space.txt",
    "ünïcode.txt",
    'quote"d.txt',
    "win.txt",
    "data.csv",
    "empty.txt",
]
REPEATED = ["}", "", "    return None", "end", "# --"]


def _line(rng: random.Random) -> str:
    if rng.random() < 0.35:
        return rng.choice(REPEATED)
    words = ("alpha", "beta", "gamma", "value", "self", "x", "if", "else", "print", "ü", "\t", "  ")
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))


class History:
    """Builds commits in ``repo`` and remembers their ids."""

    def __init__(self, repo: Path, seed: int) -> None:
        self.repo = repo
        self.rng = random.Random(seed)
        self.files: dict[str, tuple[list[str], bool, bool]] = {}  # lines, crlf, final newline
        self.commits: list[str] = []
        repo.mkdir(parents=True)
        git(repo, "init", "-q")
        git(repo, "config", "core.autocrlf", "false")
        git(repo, "config", "core.quotepath", "true")

    def _write(self, name: str) -> None:
        lines, crlf, final_newline = self.files[name]
        end = "\r\n" if crlf else "\n"
        text = end.join(lines) + (end if lines and final_newline else "")
        path = self.repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())

    def _new_file(self, name: str) -> None:
        rng = self.rng
        count = 0 if name == "empty.txt" or rng.random() < 0.1 else rng.randint(1, 90)
        self.files[name] = ([_line(rng) for _ in range(count)], name == "win.txt", rng.random() > 0.15)
        self._write(name)

    def _edit(self, name: str) -> None:
        rng = self.rng
        lines, crlf, final_newline = self.files[name]
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            at = rng.randint(0, len(lines))
            if kind < 0.35 and lines:
                lines[min(at, len(lines) - 1)] = _line(rng)
            elif kind < 0.6:
                lines[at:at] = [_line(rng) for _ in range(rng.randint(1, 5))]
            elif kind < 0.8 and lines:
                del lines[at : at + rng.randint(1, 4)]
            elif kind < 0.9:
                final_newline = not final_newline
            elif lines:
                lines[0:1] = [_line(rng)]
        self.files[name] = (lines, crlf, final_newline)
        self._write(name)

    def commit(self) -> str:
        rng = self.rng
        if not self.files:
            for name in NAMES:
                self._new_file(name)
        else:
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                present = sorted(self.files)
                if op < 0.55 and present:
                    self._edit(rng.choice(present))
                elif op < 0.65:
                    name = f"new/{rng.choice(['a', 'b', 'c'])}_{len(self.commits)}.txt"
                    if name not in self.files:
                        self._new_file(name)
                elif op < 0.73 and len(present) > 3:
                    victim = rng.choice(present)
                    del self.files[victim]
                    (self.repo / victim).unlink()
                elif op < 0.83 and present:
                    source = rng.choice(present)
                    target = f"moved/{len(self.commits)}_{Path(source).name}"
                    self.files[target] = self.files.pop(source)
                    (self.repo / source).unlink()
                    self._write(target)
                    if rng.random() < 0.5:
                        self._edit(target)
                elif op < 0.9 and present:
                    path = self.repo / rng.choice(present)
                    path.chmod(path.stat().st_mode ^ 0o111)
                elif present:
                    name = rng.choice(present)
                    lines, crlf, _ = self.files[name]
                    self.files[name] = ([] if lines else [_line(rng)], crlf, True)
                    self._write(name)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", f"c{len(self.commits)}")
        sha = git(self.repo, "rev-parse", "HEAD").stdout.decode().strip()
        self.commits.append(sha)
        return sha


def build(repo: Path, seed: int, commits: int) -> list[str]:
    """Make ``commits`` commits and return their ids, oldest first."""
    history = History(repo, seed)
    for _ in range(commits):
        history.commit()
    return history.commits
