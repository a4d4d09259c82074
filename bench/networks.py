"""Workspace network layouts at scale: one shared bridge with inter-container traffic off vs a network each.

    uv run python bench/networks.py                       # 200 workspaces of codehub/workspace:test
    uv run python bench/networks.py --count 50 --concurrency 4

For each layout, N containers shaped like workspaces (the test image, memory/pids limits, the IDE port
published on 127.0.0.1 with an engine-chosen host port) are created and started, then removed:

- shared: one bridge ``com.docker.network.bridge.enable_icc=false`` created once, every container joins it;
  removing a workspace removes its container only.
- per-workspace: a bridge per workspace (a /28 from ``--pool``: Docker's default address pools hold about
  thirty networks, so a hub with hundreds of networks has to hand out subnets itself), then its container;
  removing a workspace removes both.

Reported per layout: p50/p99 of one workspace's create+start (network included) and of its removal, the
p50 of the first and of the last 20 starts (does a start get slower as workspaces pile up?), the wall time
for all N, the engine's resident memory (dockerd + containerd, read from /proc: local engine only) with N
running beside before, and the firewall rules and network interfaces the engine added (as root). Go
keeps freed heap, so the second layout measured starts from a higher RSS: ``--order`` swaps the layouts.
Everything is labelled ``codehub.hub=bench-net-…`` and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runtime import percentile, result_row  # noqa: E402

MIB = 1024 * 1024
LAYOUTS = ("shared", "per-workspace")


def engine_rss_mib() -> float | None:
    """Resident memory of dockerd + containerd (MiB), None when they are not local processes."""
    total = 0
    for name in ("dockerd", "containerd"):
        found = subprocess.run(["pidof", "-s", name], capture_output=True, text=True).stdout.split()
        if not found:
            return None
        status = Path(f"/proc/{found[0]}/status").read_text()
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


def firewall_rules() -> int | None:
    """Number of iptables rules on this host (None without the tool or the rights)."""
    try:
        saved = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if saved.returncode != 0:
        return None
    return sum(1 for line in saved.stdout.splitlines() if line.startswith("-A "))


def interfaces() -> int:
    """Number of network interfaces of this host."""
    return len(list(Path("/sys/class/net").iterdir()))


def container_config(image: str, labels: dict[str, str], network: str) -> dict[str, Any]:
    """A container shaped like a workspace's (limits, loopback-published IDE port) on ``network``."""
    return {
        "Image": image,
        "Labels": labels,
        "ExposedPorts": {"8080/tcp": {}},
        "HostConfig": {
            "NetworkMode": network,
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            "Memory": 64 * MIB,
            "MemorySwap": 64 * MIB,
            "PidsLimit": 64,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
        },
    }


async def network(docker: aiodocker.Docker, name: str, labels: dict[str, str], **extra: Any) -> None:
    """Create a bridge network."""
    await docker.networks.create({"Name": name, "Driver": "bridge", "Labels": labels, **extra})


async def timed_all(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> tuple[list[float], float]:
    """Run ``one(i)`` for i < count, ``concurrency`` at a time; (seconds of each, wall seconds)."""
    times: list[float] = []
    limiter = anyio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with limiter:
            begin = time.perf_counter()
            await one(i)
            times.append(time.perf_counter() - begin)

    begin = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(run, i)
    return times, time.perf_counter() - begin


async def remove_labelled(docker: aiodocker.Docker, label: str) -> None:
    """Force-remove every container, then every network, carrying ``label``."""
    filters = json.dumps({"label": [label]})
    for item in await docker.containers.list(all=True, filters=filters):
        try:
            await item.delete(force=True)
        except DockerError as exc:
            if exc.status != 404:
                raise
    for item in await docker.networks.list(filters={"label": label}):
        try:
            await (await docker.networks.get(item["Id"])).delete()
        except DockerError as exc:
            if exc.status != 404:
                raise


async def measure(
    docker: aiodocker.Docker, layout: str, args: argparse.Namespace, run_id: str
) -> dict[str, float | None]:
    """Start and remove ``args.count`` workspaces in one layout; the figures."""
    label = f"codehub.hub=bench-net-{run_id}-{layout}"
    labels = {"codehub.hub": f"bench-net-{run_id}-{layout}"}
    subnets = list(ipaddress.ip_network(args.pool).subnets(new_prefix=28))
    if layout == "per-workspace" and len(subnets) < args.count:
        raise SystemExit(f"--pool {args.pool} holds only {len(subnets)} /28 subnets")
    shared = f"bench-net-{run_id}-shared"
    rss_before, rules_before, links_before = engine_rss_mib(), firewall_rules(), interfaces()
    try:
        if layout == "shared":
            await network(docker, shared, labels, Options={"com.docker.network.bridge.enable_icc": "false"})

        async def start(i: int) -> None:
            name = f"bench-net-{run_id}-{layout}-{i}"
            net = shared
            if layout == "per-workspace":
                net = name
                await network(docker, net, labels, IPAM={"Config": [{"Subnet": str(subnets[i])}]})
            container = await docker.containers.create(container_config(args.image, labels, net), name=name)
            await container.start()

        started, start_wall = await timed_all(args.count, args.concurrency, start)
        await anyio.sleep(2)
        rss_running, rules_running, links_running = engine_rss_mib(), firewall_rules(), interfaces()

        async def remove(i: int) -> None:
            name = f"bench-net-{run_id}-{layout}-{i}"
            await docker.containers.container(name).delete(force=True)
            if layout == "per-workspace":
                await (await docker.networks.get(name)).delete()

        removed, remove_wall = await timed_all(args.count, args.concurrency, remove)
    finally:
        await remove_labelled(docker, label)
    delta = None if rss_before is None or rss_running is None else rss_running - rss_before
    rules = None if rules_before is None or rules_running is None else rules_running - rules_before
    window = min(20, len(started))
    return {
        "start_p50": statistics.median(started),
        "start_first_p50": statistics.median(started[:window]),
        "start_last_p50": statistics.median(started[-window:]),
        "start_p99": percentile(started, 0.99),
        "start_wall": start_wall,
        "remove_p50": statistics.median(removed),
        "remove_p99": percentile(removed, 0.99),
        "remove_wall": remove_wall,
        "engine_rss_delta": delta,
        "rules_added": rules,
        "interfaces_added": links_running - links_before,
    }


async def main() -> int:
    """Measure both layouts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="codehub/workspace:test")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1, help="workspaces started/removed at once")
    parser.add_argument("--pool", default="10.213.0.0/16", help="subnets of the per-workspace networks")
    parser.add_argument("--docker-url", default="unix:///var/run/docker.sock")
    parser.add_argument("--order", choices=["shared-first", "per-workspace-first"], default="shared-first")
    args = parser.parse_args()
    run_id = secrets.token_hex(3)
    rows: list[dict[str, object]] = []
    async with aiodocker.Docker(url=args.docker_url) as docker:
        order = LAYOUTS if args.order == "shared-first" else LAYOUTS[::-1]
        figures = {layout: await measure(docker, layout, args, run_id) for layout in order}
    print(f"{args.count} workspaces of {args.image}, {args.concurrency} at a time:")
    for layout, got in figures.items():
        rss, rules = got["engine_rss_delta"], got["rules_added"]
        print(
            f"  {layout:>13}: start p50 {got['start_p50']:.3f}s p99 {got['start_p99']:.3f}s "
            f"(first/last 20: {got['start_first_p50']:.3f}/{got['start_last_p50']:.3f}s) "
            f"(all {got['start_wall']:.1f}s), remove p50 {got['remove_p50']:.3f}s p99 {got['remove_p99']:.3f}s "
            f"(all {got['remove_wall']:.1f}s), engine RSS +{'?' if rss is None else f'{rss:.0f}'} MiB, "
            f"firewall rules +{'?' if rules is None else rules}, interfaces +{got['interfaces_added']:.0f}"
        )
        rows += [
            result_row(f"{layout}: create+start one workspace, p50 of {args.count}", got["start_p50"], "s"),
            result_row(f"{layout}: create+start one workspace, p99 of {args.count}", got["start_p99"], "s"),
            result_row(f"{layout}: create+start, p50 of the first 20", got["start_first_p50"], "s"),
            result_row(f"{layout}: create+start, p50 of the last 20", got["start_last_p50"], "s"),
            result_row(f"{layout}: start all {args.count}", got["start_wall"], "s"),
            result_row(f"{layout}: remove one workspace, p50", got["remove_p50"], "s"),
            result_row(f"{layout}: remove all {args.count}", got["remove_wall"], "s"),
            result_row(f"{layout}: engine RSS with {args.count} running (delta)", got["engine_rss_delta"], "MiB"),
            result_row(f"{layout}: iptables rules added", got["rules_added"], "rules"),
            result_row(f"{layout}: network interfaces added", got["interfaces_added"], "interfaces"),
        ]
    print("BENCH_RESULT " + json.dumps({"bench": "networks", "rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
