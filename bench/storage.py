"""Bench: the storage seam on a local directory, a volume on the local Docker engine and on a second engine.

10 KiB file reads and writes (p50/p99), the 200-file 5,000-hunk patch of ``bench/patches.py`` (validate +
apply), and a tree listing of many files. Run: ``.venv/bin/python bench/storage.py [--quick]``; the second
engine (``scripts/second-docker-engine.sh start codehub/workspace:test``) is used when it answers.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.services.files.patches import PatchLimits, clear_cache
from app.services.files.storage import LocalStorage, WorkspaceStorage
from app.services.runtime.docker import DockerRuntime
from bench.patches import make_patch_case

IMAGE = "codehub/workspace:test"
ENGINES = {"local engine": "unix:///var/run/docker.sock", "second engine": "tcp://127.0.0.2:2375"}
RESULTS: list[dict[str, object]] = []


def result(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None) -> None:
    """One row of the ``BENCH_RESULT`` line."""
    row: dict[str, object] = {"name": name, "value": round(value, 3), "unit": unit}
    if target is not None:
        row.update(target=target, ok=ok)
    RESULTS.append(row)


async def timings(fn: Callable[[], Awaitable[object]], rounds: int) -> list[float]:
    """Milliseconds of ``rounds`` calls."""
    out = []
    for _ in range(rounds):
        begin = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - begin) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tar_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in sorted(directory.iterdir()):
            archive.add(entry, arcname=entry.name, filter=lambda i: (setattr(i, "uid", 1000), i)[1])
    return buffer.getvalue()


async def bench_backend(label: str, storage: WorkspaceStorage, seed: Path, rounds: int, tree_files: int) -> None:
    """Reads, writes, the big patch and a listing on one backend (``seed``: the patch case's tree)."""
    data = secrets.token_bytes(10 * 1024 // 2).hex().encode()
    await storage.write_file("bench/ten.txt", data)
    writes = await timings(lambda: storage.write_file("bench/ten.txt", data), rounds)
    reads = await timings(lambda: storage.read_raw("bench/ten.txt", max_bytes=1 << 20), rounds)
    for name, values in (("read", reads), ("write", writes)):
        p50 = statistics.median(values)
        result(f"{label}: 10 KiB {name} p50", p50, "ms", "<= 10 ms", p50 <= 10)
        result(f"{label}: 10 KiB {name} p99", pct(values, 0.99), "ms")
    diff = (seed / "case.diff").read_text()
    clear_cache()
    begin = time.perf_counter()
    assert (await storage.validate_patch(diff, limits=PatchLimits())).ok
    await storage.apply_patch(diff, limits=PatchLimits())
    result(f"{label}: 5,000-hunk patch validate + apply", (time.perf_counter() - begin) * 1000, "ms")
    begin = time.perf_counter()
    tree = await storage.list_tree("many", 2, include_git=False, max_entries=tree_files + 10)
    result(f"{label}: tree of {len(tree.entries)} entries", (time.perf_counter() - begin) * 1000, "ms")


def make_seed(base: Path, tree_files: int) -> Path:
    """The patch case's files (``repo/``), its diff, and ``repo/many/`` with ``tree_files`` small files."""
    seed = base / "seed"
    seed.mkdir()
    diff = make_patch_case(seed)
    (seed / "case.diff").write_text(diff)
    many = seed / "repo" / "many"
    for i in range(tree_files):
        sub = many / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_bytes(b"x")
    return seed


async def main(quick: bool) -> None:
    rounds, tree_files = (20, 2_000) if quick else (200, 50_000)
    with tempfile.TemporaryDirectory(prefix="codehub-bench-storage-") as tmp:
        seed = make_seed(Path(tmp), tree_files)
        local = Path(tmp) / "local"
        subprocess.run(["cp", "-a", str(seed / "repo"), str(local)], check=True)
        await bench_backend("directory", LocalStorage(local), seed, rounds, tree_files)
        upload = tar_of(seed / "repo")
        for label, url in ENGINES.items():
            hub_id = f"bench-{secrets.token_hex(4)}"
            async with DockerRuntime(url, hub_id=hub_id, helper_image=IMAGE) as runtime:
                if not (await runtime.info()).ok:
                    print(f"{label}: not answering at {url}, skipped")
                    continue
                workspace_id = "b" + secrets.token_hex(5)
                files = runtime.volume_files(workspace_id)
                try:
                    await files.ensure()
                    await files._put(files.project, upload)
                    await bench_backend(f"volume on {label}", runtime.storage(workspace_id), seed, rounds, tree_files)
                finally:
                    await runtime.remove(workspace_id, purge=True)
    width = max(len(str(row["name"])) for row in RESULTS)
    for row in RESULTS:
        print(f"{row['name']:<{width}}  {row['value']} {row['unit']}")
    print("BENCH_RESULT " + json.dumps({"bench": "storage", "rows": RESULTS}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few rounds, a small tree")
    anyio.run(main, parser.parse_args().quick)
