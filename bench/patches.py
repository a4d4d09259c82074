"""Bench: patch validate+apply of a 200-file, 5,000-hunk diff beside git, and a 50,000-file tree listing.

Run: ``.venv/bin/python bench/patches.py`` (about half a minute). Prints a small table; the patch target
is to stay within 2x of ``git apply --check`` + ``git apply`` on a copy of the same tree, same run.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.services import files
from app.services.files import patches
from app.services.files.patches import PatchLimits

FILES = 200
HUNKS_PER_FILE = 25
GAP = 24
TREE_FILES = 50_000
ROUNDS = 7
RESULTS: list[dict[str, object]] = []  # rows of the BENCH_RESULT line (bench/README.md)


def result(
    name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None, *, reference: bool = False
) -> None:
    """Add one row to the ``BENCH_RESULT`` line."""
    row: dict[str, object] = {"name": name, "value": round(value, 3), "unit": unit}
    if target is not None:
        row.update(target=target, ok=ok)
    if reference:
        row["reference"] = True
    RESULTS.append(row)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "value", "return", "self", "x")) for _ in range(n))


def make_patch_case(base: Path) -> str:
    """Write the base tree (a git repo) and return the diff of 200 files x 25 hunks against it."""
    rng = random.Random(7)
    repo = base / "repo"
    repo.mkdir()
    for i in range(FILES):
        path = repo / f"pkg{i % 10}" / f"module_{i}.py"
        path.parent.mkdir(exist_ok=True)
        lines = [f"    line {k}: {_words(rng, 6)}\n" for k in range(HUNKS_PER_FILE * GAP + GAP)]
        path.write_text("".join(lines))
    git = ["git", "-C", str(repo), "-c", "user.email=b@b", "-c", "user.name=bench"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    for i in range(FILES):
        path = repo / f"pkg{i % 10}" / f"module_{i}.py"
        lines = path.read_text().splitlines(keepends=True)
        for h in range(HUNKS_PER_FILE):
            at = GAP // 2 + h * GAP
            lines[at] = f"    changed {h}: {_words(rng, 5)}\n"
            lines.insert(at + 1, f"    added {h}\n")
        path.write_text("".join(lines))
    diff = subprocess.run([*git, "diff"], check=True, capture_output=True).stdout.decode()
    subprocess.run([*git, "checkout", "-q", "--", "."], check=True)
    shutil.rmtree(repo / ".git")
    return diff


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process and its children, user + system) of ``fn()``."""
    before = _cpu()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, _cpu() - before


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_patches(base: Path) -> list[tuple[str, str]]:
    diff = make_patch_case(base)
    hunks = diff.count("\n@@ -")
    diff_file = base / "bench.diff"
    diff_file.write_text(diff, newline="")
    limits = PatchLimits(max_patch_bytes=64 << 20, max_patch_hunks=100_000)
    ours: list[tuple[float, float]] = []
    gits: list[tuple[float, float]] = []
    for round_ in range(ROUNDS):
        mine = base / f"ours{round_}"
        theirs = base / f"git{round_}"
        shutil.copytree(base / "repo", mine)
        shutil.copytree(base / "repo", theirs)
        os.sync()  # flush the copies so neither side pays for the setup's dirty pages

        def run_ours(root: Path = mine) -> None:
            patches.clear_cache()  # validate parses; apply reuses that parse, as after a real validate
            assert patches.validate(root, diff, limits=limits).ok
            patches.apply(root, diff, limits=limits)

        def run_git(root: Path = theirs) -> None:
            for args in (["--check"], []):
                subprocess.run(["git", "apply", *args, str(diff_file)], cwd=root, check=True)

        if round_ % 2:
            ours.append(timed(run_ours))
            gits.append(timed(run_git))
        else:
            gits.append(timed(run_git))
            ours.append(timed(run_ours))
        assert _same(mine, theirs), "results differ from git apply"
    gw, gc = (statistics.median(t[k] for t in gits) for k in (0, 1))
    ow, oc = (statistics.median(t[k] for t in ours) for k in (0, 1))
    result("patch: git apply --check + git apply, wall (median)", gw * 1000, "ms", reference=True)
    result("patch: git apply --check + git apply, cpu (median)", gc * 1000, "ms", reference=True)
    result(f"patch: validate + apply {hunks} hunks, wall (median)", ow * 1000, "ms")
    result(f"patch: validate + apply {hunks} hunks, cpu (median)", oc * 1000, "ms")
    result("patch: ours / git, wall", ow / gw, "x", "<= 2x git apply", ow / gw <= 2)
    result("patch: ours / git, cpu", oc / gc, "x", "<= 2x git apply", oc / gc <= 2)
    return [
        ("diff", f"{FILES} files, {hunks} hunks, {len(diff) / 1e6:.1f} MB, {ROUNDS} rounds"),
        ("git apply --check + git apply: wall / cpu", f"{gw * 1000:.0f} ms / {gc * 1000:.0f} ms"),
        ("validate + apply: wall / cpu", f"{ow * 1000:.0f} ms / {oc * 1000:.0f} ms"),
        ("ratio ours / git: wall / cpu (target <= 2x)", f"{ow / gw:.2f}x / {oc / gc:.2f}x"),
    ]


def _same(a: Path, b: Path) -> bool:
    for dirpath, _dirs, names in os.walk(a):
        for name in names:
            left = Path(dirpath) / name
            right = b / left.relative_to(a)
            if left.read_bytes() != right.read_bytes():
                return False
    return True


def bench_tree(base: Path) -> list[tuple[str, str]]:
    root = base / "tree"
    for d in range(500):
        folder = root / f"dir{d // 50:02d}" / f"sub{d:03d}"
        folder.mkdir(parents=True)
        for f in range(TREE_FILES // 500):
            (folder / f"file{f:03d}.txt").write_bytes(b"x")
    full = [timed(lambda: files.list_tree(root, "", depth=10, max_entries=100_000))[0] for _ in range(ROUNDS)]
    capped = [timed(lambda: files.list_tree(root, "", depth=10))[0] for _ in range(ROUNDS)]
    one = timed(lambda: files.list_tree(root, "dir00/sub000", depth=1))[0]
    walk = timed(lambda: sum(len(n) for _, _, n in os.walk(root)))[0]
    count = len(files.list_tree(root, "", depth=10, max_entries=100_000).entries)
    result(f"tree: full listing of {count} entries, depth 10 (median)", statistics.median(full) * 1000, "ms")
    result("tree: default cap 10,000 entries (median)", statistics.median(capped) * 1000, "ms")
    result("tree: one directory of 100 files", one * 1000, "ms")
    result("tree: os.walk of the same tree (no stat)", walk * 1000, "ms", reference=True)
    return [
        ("tree: workspace", f"{TREE_FILES} files in 510 dirs"),
        ("tree: full listing, depth 10 (median)", f"{statistics.median(full) * 1e3:.0f} ms, {count} entries"),
        ("tree: default cap 10,000 entries (median)", f"{statistics.median(capped) * 1000:.0f} ms"),
        ("tree: one directory of 100 files", f"{one * 1000:.1f} ms"),
        ("os.walk of the same tree (no stat), for scale", f"{walk * 1000:.0f} ms"),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="codehub-bench-") as tmp:
        rows = bench_patches(Path(tmp)) + bench_tree(Path(tmp))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("BENCH_RESULT " + json.dumps({"bench": "patches", "rows": RESULTS}), flush=True)


if __name__ == "__main__":
    main()
