"""Bench: the storage seam on a local directory, a volume on the local Docker engine and on a second engine.

10 KiB file reads and writes (p50/p99, target p50 <= 10 ms), the 200-file 5,000-hunk patch of
``bench/patches.py`` (validate + apply, median of 5 runs, each on the tree put back as it was; target: within 2x
of the local directory's median in the same run), a tree
listing of 50,000 files, and a move of a 1 GiB volume of 20,000 files from the local engine to the second
(copy + verify, ``docker_move.copy_volume``) in MB/s, against raw ``tar`` through the engine API in the same
run (``GET …/archive`` on one engine piped into ``PUT …/archive`` on the other, nothing verified; target: the
move at least 40 % of it, as it reads the target back once more to verify). ``--quick``: 20 rounds, a 2,000-file
tree, a 64 MiB volume of 2,000 files. Run: ``.venv/bin/python bench/storage.py [--quick]``; the second engine
(``scripts/second-docker-engine.sh start codehub/workspace:test``) is used when it answers.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.services.files.patches import PatchLimits, clear_cache
from app.services.files.remote_storage import RemoteStorage
from app.services.files.storage import LocalStorage, WorkspaceStorage
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.docker_move import TIMEOUT, MoveProgress, copy_volume
from app.services.runtime.docker_volume import DockerVolumeFiles
from bench.patches import make_patch_case

IMAGE = "codehub/workspace:test"
ENGINES = {"local engine": "unix:///var/run/docker.sock", "second engine": "tcp://127.0.0.2:2375"}
RESULTS: list[dict[str, object]] = []
PATCH_MS: dict[str, float] = {}
PATCH_SAMPLES = 5  # validate + apply runs per backend, each on the restored tree; the rows give their median
CHUNK = 1 << 16


def result(name: str, value: float, unit: str, target: str | None = None, ok: bool | None = None) -> None:
    """One row of the ``BENCH_RESULT`` line (and of the printed table, with its target and ok/MISSED)."""
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


def tar_of(directory: Path, entries: list[Path] | None = None) -> bytes:
    """A tar of ``directory``'s entries (or of ``entries`` among them), owned by uid 1000."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in entries if entries is not None else sorted(directory.iterdir()):
            archive.add(entry, arcname=entry.name, filter=lambda i: (setattr(i, "uid", 1000), i)[1])
    return buffer.getvalue()


async def bench_backend(
    label: str,
    storage: WorkspaceStorage,
    seed: Path,
    rounds: int,
    tree_files: int,
    restore: Callable[[], Awaitable[None]],
) -> None:
    """Reads, writes, the big patch and a listing on one backend (``seed``: the patch case's tree; ``restore``
    puts its files back as they were before the patch, untimed, before each sample)."""
    data = secrets.token_bytes(10 * 1024 // 2).hex().encode()
    await storage.write_file("bench/ten.txt", data)
    writes = await timings(lambda: storage.write_file("bench/ten.txt", data), rounds)
    reads = await timings(lambda: storage.read_raw("bench/ten.txt", max_bytes=1 << 20), rounds)
    for name, values in (("read", reads), ("write", writes)):
        p50 = statistics.median(values)
        result(f"{label}: 10 KiB {name} p50", p50, "ms", "<= 10 ms", p50 <= 10)
        result(f"{label}: 10 KiB {name} p99", pct(values, 0.99), "ms")
    diff = (seed / "case.diff").read_text()
    samples = []
    for _ in range(PATCH_SAMPLES):
        await restore()
        clear_cache()
        if isinstance(storage, RemoteStorage) and storage.cache is not None:
            storage.cache.drop(storage.scope)  # every sample reads the files as the first one does
        begin = time.perf_counter()
        assert (await storage.validate_patch(diff, limits=PatchLimits())).ok
        await storage.apply_patch(diff, limits=PatchLimits())
        samples.append((time.perf_counter() - begin) * 1000)
    patch_ms = PATCH_MS[label] = statistics.median(samples)
    result(f"{label}: 5,000-hunk patch validate + apply, median of {PATCH_SAMPLES}", patch_ms, "ms")
    result(f"{label}: 5,000-hunk patch, fastest sample", min(samples), "ms")
    result(f"{label}: 5,000-hunk patch, slowest sample", max(samples), "ms")
    if "directory" in PATCH_MS and label != "directory":
        ratio = patch_ms / PATCH_MS["directory"]
        result(f"{label}: patch / local directory (medians)", ratio, "x", "<= 2x", ratio <= 2)
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


async def tar_stream(files: int, total: int) -> AsyncIterator[bytes]:
    """A tar of ``project/big/d<k>/f<i>.bin``: ``files`` files of ``total`` bytes in all (distinct contents)."""
    size = total // files
    block = secrets.token_bytes(1 << 20)
    for directory in range(files // 1000 + 1):
        yield _header(f"project/big/d{directory:03d}", tarfile.DIRTYPE, 0)
    for index in range(files):
        yield _header(f"project/big/d{index // 1000:03d}/f{index}.bin", tarfile.REGTYPE, size)
        data = index.to_bytes(8, "big") + block[(index * 4096) % (len(block) - size) :][: size - 8]
        yield data + b"\0" * (-size % 512)
    yield b"\0" * 1024


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.uid, info.gid = kind, size, 1000, 1000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)


async def raw_tar(source: DockerVolumeFiles, target: DockerVolumeFiles) -> None:
    """``GET …/archive`` of the source home piped into ``PUT …/archive`` of a new target volume."""
    await target.ensure_volume()
    helper = await target.helper(nocopy=True)
    async with (
        source.docker._query(
            f"containers/{await source.helper()}/archive", params={"path": f"{source.home}/."}, timeout=TIMEOUT
        ) as response,
        target.docker._query(
            f"containers/{helper}/archive",
            method="PUT",
            params={"path": target.home},
            data=response.content.iter_chunked(CHUNK),
            headers={"Content-Type": "application/x-tar"},
            timeout=TIMEOUT,
        ),
    ):
        pass


async def bench_move(local: DockerRuntime, second: DockerRuntime, files: int, total: int) -> None:
    """The move (copy + verified read-back) and raw ``tar`` from the local engine to the second, in MB/s."""
    workspace_id = "m" + secrets.token_hex(5)
    source = local.volume_files(workspace_id)
    await source.ensure()
    try:
        async with source.docker._query(
            f"containers/{await source.helper()}/archive",
            method="PUT",
            params={"path": source.home},
            data=tar_stream(files, total),
            headers={"Content-Type": "application/x-tar"},
            timeout=TIMEOUT,
        ):
            pass
        rates: dict[str, float] = {}
        for label in ("raw tar", "move"):
            target = second.volume_files(f"{workspace_id}{label[0]}")
            begin = time.perf_counter()
            try:
                if label == "move":
                    target = second.volume_files(workspace_id)
                    manifest = await copy_volume(source, target, _quiet)
                    assert manifest.size >= total - files, manifest.size
                else:
                    await raw_tar(source, target)
                rates[label] = total / (time.perf_counter() - begin) / 1e6
            finally:
                await second.remove(target.workspace_id, purge=True)
        mib = f"{total >> 20} MiB, {files:,} files"
        result(f"move {mib}, local → second engine: raw tar", rates["raw tar"], "MB/s")
        ratio = rates["move"] / rates["raw tar"]
        result(f"move {mib}, local → second engine: move (copy + verify)", rates["move"], "MB/s")
        result("move / raw tar", ratio, "x", ">= 0.4x", ratio >= 0.4)
    finally:
        await local.remove(workspace_id, purge=True)


async def _quiet(_progress: MoveProgress) -> None:
    return None


async def main(quick: bool) -> None:
    rounds, tree_files = (20, 2_000) if quick else (200, 50_000)
    move_files, move_bytes = (2_000, 64 << 20) if quick else (20_000, 1 << 30)
    with tempfile.TemporaryDirectory(prefix="codehub-bench-storage-") as tmp:
        seed = make_seed(Path(tmp), tree_files)
        local = Path(tmp) / "local"
        subprocess.run(["cp", "-a", str(seed / "repo"), str(local)], check=True)
        patched = sorted(p for p in (seed / "repo").iterdir() if p.name.startswith("pkg"))

        async def restore_directory() -> None:
            for directory in patched:
                shutil.copytree(directory, local / directory.name, dirs_exist_ok=True)

        await bench_backend("directory", LocalStorage(local), seed, rounds, tree_files, restore_directory)
        upload = tar_of(seed / "repo")
        originals = tar_of(seed / "repo", patched)
        for label, url in ENGINES.items():
            hub_id = f"bench-{secrets.token_hex(4)}"
            async with DockerRuntime(url, hub_id=hub_id, helper_image=IMAGE) as runtime:
                if not (await runtime.info()).ok:
                    print(f"{label}: not answering at {url}, skipped")
                    continue
                workspace_id = "b" + secrets.token_hex(5)
                files = runtime.volume_files(workspace_id)

                async def restore_volume(files: DockerVolumeFiles = files) -> None:
                    await files._put(files.project, originals)
                    await files.run([":"])  # after the last sample's deferred removal of its backups

                try:
                    await files.ensure()
                    await files._put(files.project, upload)
                    storage = runtime.storage(workspace_id)
                    await bench_backend(f"volume on {label}", storage, seed, rounds, tree_files, restore_volume)
                finally:
                    await runtime.remove(workspace_id, purge=True)
    hub_id = f"bench-{secrets.token_hex(4)}"
    async with (
        DockerRuntime(ENGINES["local engine"], hub_id=hub_id, helper_image=IMAGE) as local_engine,
        DockerRuntime(ENGINES["second engine"], hub_id=hub_id, helper_image=IMAGE) as second_engine,
    ):
        if (await local_engine.info()).ok and (await second_engine.info()).ok:
            await bench_move(local_engine, second_engine, move_files, move_bytes)
        else:
            print("move: needs both engines, skipped")
    width = max(len(str(row["name"])) for row in RESULTS)
    for row in RESULTS:
        verdict = "" if "target" not in row else f"  (target {row['target']}: {'ok' if row['ok'] else 'MISSED'})"
        print(f"{row['name']:<{width}}  {row['value']} {row['unit']}{verdict}")
    print("BENCH_RESULT " + json.dumps({"bench": "storage", "rows": RESULTS}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few rounds, a small tree")
    anyio.run(main, parser.parse_args().quick)
