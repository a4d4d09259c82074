"""Runtime benchmark: create→running through the hub vs a raw ``docker run`` to the same readiness.

    uv run python bench/runtime.py                          # 10 alternating pairs, then 20 concurrent
    uv run python bench/runtime.py --pairs 5 --concurrent 10 --image codehub/code-server:local

The hub runs as a subprocess (``codehub serve``: one uvicorn worker, SQLite, the local Docker engine, a
unique hub id). "Ready" means the same thing on both sides: the IDE port answers an HTTP request on
``/healthz``, polled with the hub's own helper (same probe schedule).

- hub: ``POST /api/workspaces`` then ``POST …/start?wait=true`` (answers once running), timed together.
- raw: ``docker run -d`` with the same image, limits, capabilities, log options, published port, network
  (the hub's workspace bridge, inter-container traffic off; ``--raw-network bridge``: Docker's default
  bridge, where a container starts 100-150 ms sooner on a 2-core machine) and storage (a named volume at
  the home, the project directory as working directory, as the hub's Docker workspaces have; ``--raw-storage
  bind``: a bind-mounted directory, whose start measured ~50 ms (~13 %) quicker through the engine's API on
  this machine), then polling until it answers. The hub does one thing more: Docker makes a new volume's
  project directory root's, and the hub's start hands it to the workspace user (its container does, before
  the IDE: a few ms); the raw container's stays root's, unwritable by its user.

Pairs alternate which side goes first. Reported: median and mean of each side and the ratio of medians
(target ≤ 1.05). Then N workspaces created and started at once: all running?, p50/p99/max create→running,
beside the same burst of raw ``docker run`` (target: hub p99 ≤ raw p99).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.services.runtime.common import wait_until_ready  # noqa: E402
from app.services.runtime.docker_network import network_name  # noqa: E402
from app.services.runtime.docker_support import IDE_CAPABILITIES  # noqa: E402

RATIO_TARGET = 1.05


def ok_text(ok: bool) -> str:
    """``ok`` or ``MISSED``, as the run_all table marks a row."""
    return "ok" if ok else "MISSED"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def hub_env(data: Path, hub_id: str, image: str, mount: str, port: int) -> dict[str, str]:
    """Environment of the benchmarked hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        {
            "CODEHUB_DATA_DIR": str(data),
            "CODEHUB_RUNTIME": "docker",
            "CODEHUB_DOCKER_URL": "unix:///var/run/docker.sock",
            "CODEHUB_HUB_ID": hub_id,
            "CODEHUB_DEFAULT_IMAGE": image,
            "CODEHUB_WORKSPACE_MOUNT": mount,
            "CODEHUB_DEFAULT_CPU": "0.5",
            "CODEHUB_DEFAULT_MEMORY_MB": "512",
            "CODEHUB_START_TIMEOUT": "120",
            "CODEHUB_LOG_LEVEL": "warning",
            "CODEHUB_MAX_WORKSPACES_PER_USER": "0",
            "CODEHUB_API_RATE_PER_MINUTE": "0",
            "CODEHUB_HOST": "127.0.0.1",
            "CODEHUB_PORT": str(port),
        }
    )
    return env


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HOME = "/home/coder"  # the hub's default CODEHUB_WORKSPACE_HOME


def raw_storage(kind: str, mount_dir: Path, mount: str, name: str) -> list[str]:
    """``docker run`` arguments giving the raw container the hub's storage (``volume``) or a bind mount."""
    if kind == "volume":
        volume = f"type=volume,src={name},dst={HOME},volume-label=codehub.bench=raw"
        return ["--mount", volume, "-w", f"{HOME}/project", "-e", f"HOME={HOME}"]
    mount_dir.mkdir(parents=True, exist_ok=True)
    os.chown(mount_dir, 1000, 1000) if os.getuid() == 0 else None
    return ["-v", f"{mount_dir}:{mount}", "-w", mount]


async def raw_run(image: str, mount_dir: Path, mount: str, name: str, network: str, storage: str = "volume") -> float:
    """``docker run -d`` (same limits, hardening, network and storage as the hub's) until the IDE answers;
    seconds."""
    storage_args = raw_storage(storage, mount_dir, mount, name)
    begin = time.perf_counter()
    cid = (
        (
            await anyio.run_process(
                [
                    "docker",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--label",
                    "codehub.bench=raw",
                    "--cpus",
                    "0.5",
                    "--memory",
                    "512m",
                    "--memory-swap",
                    "512m",
                    "--pids-limit",
                    "1024",
                    "--cap-drop",
                    "ALL",
                    *(arg for cap in IDE_CAPABILITIES for arg in ("--cap-add", cap)),
                    "--network",
                    network,
                    "--log-opt",
                    "max-size=10m",
                    "--log-opt",
                    "max-file=3",
                    "--security-opt",
                    "no-new-privileges:true",
                    "--user",
                    "1000:1000",
                    "-p",
                    "127.0.0.1::8080",
                    *storage_args,
                    image,
                ]
            )
        )
        .stdout.decode()
        .strip()
    )
    port_line = (await anyio.run_process(["docker", "port", cid, "8080/tcp"])).stdout.decode().split()[0]
    url = "http://" + port_line

    async def alive() -> bool:
        return True

    await wait_until_ready(url, within=120, alive=alive)
    elapsed = time.perf_counter() - begin
    await anyio.run_process(["docker", "rm", "-f", cid])
    if storage == "volume":
        await anyio.run_process(["docker", "volume", "rm", name], check=False)
    return elapsed


async def hub_run(client: httpx.AsyncClient, name: str) -> tuple[float, str]:
    """Create and start a workspace through the hub until it is running; (seconds, workspace id)."""
    begin = time.perf_counter()
    r = await client.post("/api/workspaces", json={"name": name})
    r.raise_for_status()
    workspace_id = r.json()["id"]
    r = await client.post(f"/api/workspaces/{workspace_id}/start", params={"wait": "true"})
    r.raise_for_status()
    if r.json()["state"] != "running":
        raise RuntimeError(f"{name}: {r.json()['state']}: {r.json()['state_reason']}")
    return time.perf_counter() - begin, workspace_id


async def hub_burst(
    client: httpx.AsyncClient, count: int, label: str = ""
) -> tuple[list[float], list[dict[str, object]]]:
    """Create and start `count` workspaces at once through the hub, then purge them; (seconds each, result rows)."""
    times: list[float] = []
    ids: list[str] = []

    async def one(n: int) -> None:
        elapsed, workspace_id = await hub_run(client, f"burst-{n}")
        times.append(elapsed)
        ids.append(workspace_id)

    begin = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(one, n)
    wall = time.perf_counter() - begin
    running = [w for w in ids if (await client.get(f"/api/workspaces/{w}")).json()["state"] == "running"]
    print(f"{count} workspaces created+started at once: {len(running)}/{count} running")
    print(
        f"  create→running p50 {percentile(times, 0.5):.3f}  p99 {percentile(times, 0.99):.3f}  "
        f"max {max(times):.3f}  (all within {wall:.3f} s)"
    )
    rows = [
        result_row(f"{label}{count} at once: running", len(running), "workspaces", f"= {count}", len(running) == count),
        result_row(f"{label}{count} at once: create→running p50", percentile(times, 0.5), "s"),
        result_row(f"{label}{count} at once: create→running p99", percentile(times, 0.99), "s"),
    ]
    for workspace_id in ids:
        await client.delete(f"/api/workspaces/{workspace_id}", params={"purge": "true"})
    return times, rows


async def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="codehub/workspace:test")
    parser.add_argument("--mount", default=None, help="mount point (default: /workspace or code-server's)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument(
        "--raw-network",
        choices=["hub", "bridge"],
        default="hub",
        help="raw containers join the hub's workspace network (the same container) or Docker's default bridge",
    )
    parser.add_argument(
        "--raw-storage",
        choices=["volume", "bind"],
        default="volume",
        help="raw containers keep their home in a named volume (as the hub's do) or bind-mount a directory",
    )
    parser.add_argument(
        "--profile",
        metavar="OUT",
        help="record the hub with py-spy (wall clock, idle included) into OUT as collapsed stacks",
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy executable")
    args = parser.parse_args()
    mount = args.mount or ("/home/coder/project" if "code-server" in args.image else "/workspace")
    data = Path(tempfile.mkdtemp(prefix="codehub-bench-"))
    hub_id = f"bench-{secrets.token_hex(4)}"
    port = free_port()
    env = hub_env(data, hub_id, args.image, mount, port)
    codehub = [sys.executable, "-m", "app"]
    subprocess.run([*codehub, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    made = subprocess.run(
        [*codehub, "create-user", "bench", "--admin", "--password", "bench-password-1"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    token = made.stdout.strip().splitlines()[-1].split()[-1]
    hub = subprocess.Popen([*codehub, "serve"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows: list[dict[str, object]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=300) as client:
            with anyio.fail_after(60):
                while True:
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)
            await hub_run(client, "warmup")  # also creates the hub's workspace network
            raw_network = network_name(hub_id, "open") if args.raw_network == "hub" else "bridge"
            print(f"raw docker run joins the network {raw_network}, storage: {args.raw_storage}", flush=True)
            if args.profile:
                spy = subprocess.Popen(
                    [args.py_spy, "record", "--pid", str(hub.pid), "--idle", "--format", "raw", "-o", args.profile],
                    stdout=subprocess.DEVNULL,
                )
            await raw_run(
                args.image,
                data / "raw" / "warmup",
                mount,
                f"codehub-bench-raw-{hub_id}-w",
                raw_network,
                args.raw_storage,
            )

            hub_times: list[float] = []
            raw_times: list[float] = []
            for i in range(args.pairs):
                order = ("hub", "raw") if i % 2 == 0 else ("raw", "hub")
                for side in order:
                    if side == "hub":
                        elapsed, workspace_id = await hub_run(client, f"pair-{i}")
                        hub_times.append(elapsed)
                        await client.delete(f"/api/workspaces/{workspace_id}", params={"purge": "true"})
                    else:
                        name = f"codehub-bench-raw-{hub_id}-{i}"
                        raw_times.append(
                            await raw_run(args.image, data / "raw" / str(i), mount, name, raw_network, args.raw_storage)
                        )
            ratio = statistics.median(hub_times) / statistics.median(raw_times)
            print(f"image {args.image}, {args.pairs} alternating pairs (seconds to an HTTP answer):")
            print(
                f"  hub create+start : median {statistics.median(hub_times):.3f}  mean {statistics.mean(hub_times):.3f}"
            )
            print(
                f"  raw docker run   : median {statistics.median(raw_times):.3f}  mean {statistics.mean(raw_times):.3f}"
            )
            ratio_ok = ratio <= RATIO_TARGET
            print(f"  ratio hub/raw (medians): {ratio:.3f}  (target <= {RATIO_TARGET:g}) {ok_text(ratio_ok)}")
            rows += [
                result_row(f"hub create+start, median of {args.pairs}", statistics.median(hub_times), "s"),
                result_row(
                    f"raw docker run, median of {args.pairs}", statistics.median(raw_times), "s", reference=True
                ),
                result_row("hub / raw docker run (medians)", round(ratio, 3), "x", f"<= {RATIO_TARGET:g}", ratio_ok),
            ]

            times, burst_rows = await hub_burst(client, args.concurrent)
            rows += burst_rows

            raw_burst: list[float] = []

            async def raw_one(n: int) -> None:
                name = f"codehub-bench-raw-{hub_id}-b{n}"
                raw_burst.append(
                    await raw_run(args.image, data / "raw" / f"b{n}", mount, name, raw_network, args.raw_storage)
                )

            begin = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for n in range(args.concurrent):
                    tg.start_soon(raw_one, n)
            wall = time.perf_counter() - begin
            hub_p99, raw_p99 = percentile(times, 0.99), percentile(raw_burst, 0.99)
            print(
                f"  same burst as raw docker run: p50 {percentile(raw_burst, 0.5):.3f}  "
                f"p99 {raw_p99:.3f}  max {max(raw_burst):.3f}  (all within {wall:.3f} s)"
            )
            burst_ok = hub_p99 <= raw_p99
            print(f"  hub p99 {hub_p99:.3f} vs raw p99 {raw_p99:.3f} (target: hub <= raw) {ok_text(burst_ok)}")
            rows += [
                result_row(
                    f"{args.concurrent} at once: raw docker run p50", percentile(raw_burst, 0.5), "s", reference=True
                ),
                result_row(f"{args.concurrent} at once: raw docker run p99", raw_p99, "s", reference=True),
                result_row(
                    f"{args.concurrent} at once: hub p99 / raw docker run p99",
                    round(hub_p99 / raw_p99, 3),
                    "x",
                    "<= 1",
                    burst_ok,
                ),
            ]
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(60)
        hub.terminate()
        hub.wait(30)
        for label in (f"codehub.hub={hub_id}", "codehub.bench=raw"):
            left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True)
            if left.stdout.split():
                subprocess.run(["docker", "rm", "-f", *left.stdout.split()], capture_output=True)
        subprocess.run(["docker", "network", "rm", network_name(hub_id, "open")], capture_output=True)
        volumes = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", "label=codehub.bench=raw"], capture_output=True, text=True
        )
        if volumes.stdout.split():
            subprocess.run(["docker", "volume", "rm", *volumes.stdout.split()], capture_output=True)
    print("BENCH_RESULT " + json.dumps({"bench": "runtime", "rows": rows}), flush=True)
    return 0


def result_row(
    name: str,
    value: float | None,
    unit: str,
    target: str | None = None,
    ok: bool | None = None,
    *,
    reference: bool = False,
) -> dict[str, object]:
    """One row of the ``BENCH_RESULT`` line (bench/README.md)."""
    row: dict[str, object] = {"name": name, "value": None if value is None else round(value, 4), "unit": unit}
    if target is not None:
        row.update(target=target, ok=ok)
    if reference:
        row["reference"] = True
    return row


if __name__ == "__main__":
    sys.exit(anyio.run(main))
