"""Cluster bench: two ``codehub serve`` processes behind nginx, on Postgres + Redis (one process per core).

    uv run python bench/cluster.py                       # 5,000 SSE subscribers, 20 s; relay 3 rounds of 8 s
    uv run python bench/cluster.py --quick               # small: 300 subscribers, 3 s; relay 1 round of 2 s
    uv run python bench/cluster.py --sse-via direct      # each client process dials one hub itself

Every process runs on loopback and is stopped at the end: a fresh Postgres database, a unique Redis prefix
on 127.0.0.1:6379, two hub processes sharing both (``python -m app serve``, local runtime, same hub id),
Debian's nginx (``/usr/sbin/nginx``, one worker) in front of them, ``bench/upstream.py`` as the IDE of one
workspace row, and the SSE clients of ``bench/fanout.py``.

- SSE: ``--subscribers`` connections to ``GET /api/events?topic=user:<id>`` (a dashboard's subscription to
  its user's workspaces), through nginx by default (``least_conn`` over the two hubs, ``proxy_buffering
  off``): a browser reaches a deployment through its proxy, so the proxy's latency is part of what users
  see, and nginx's spread is checked, not assumed (each hub's ``codehub_event_subscribers`` is printed).
  Events come from the API of hub A only: the orchestrator renames the user's ``RENAMED`` workspaces in
  turn (``PATCH /api/workspaces/<id>``, name ``b-<µs>-<n>``) ``--rate`` times a second, on schedule with up
  to ``IN_FLIGHT`` requests open (renames of one row would queue on its row lock). Each rename commits to
  Postgres and is published through Redis, so hub B's subscribers get it only across processes. Latency
  is rename call → receipt. Targets: ≥ 98 % of the offered deliveries within the publish window, p99
  < 300 ms, 0 lost.
- Relay: HTTP 1 KiB at 50 connections (``wrk -t1 -c50``, as bench/relay.py) through nginx to both hubs and,
  in the same run with rounds interleaved, through nginx to hub A alone. Target: two ≥ 1.7 times one. CPU
  seconds of each process group (hubs, nginx, upstream, wrk) are printed per run: on a 2-core machine the
  load generator, nginx and the upstream share the cores with the hubs, which is what limits the ratio.

Last line: ``BENCH_RESULT {json}`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import fanout as fo  # noqa: E402
import relay as rl  # noqa: E402
from api import POSTGRES_URL, database  # noqa: E402

REDIS_URL = os.environ.get("CODEHUB_TEST_REDIS", "redis://127.0.0.1:6379/0")
SSE_DELIVERED_PCT = 98.0
SSE_P99_MS = 300.0
RELAY_RATIO = 1.7
IN_FLIGHT = 32
RENAMED = 8


def hub_env(data: Path, db_url: str, prefix: str, hub_id: str, port: int) -> dict[str, str]:
    """The environment of one hub process (both share the database, Redis prefix, data dir and hub id)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(data),
        CODEHUB_DATABASE_URL=db_url,
        CODEHUB_REDIS_URL=REDIS_URL,
        CODEHUB_REDIS_PREFIX=prefix,
        CODEHUB_HUB_ID=hub_id,
        CODEHUB_HOST="127.0.0.1",
        CODEHUB_PORT=str(port),
        CODEHUB_RUNTIME="local",
        CODEHUB_DOCKER_URL="none",
        CODEHUB_IDLE_TIMEOUT="0",
        CODEHUB_API_RATE_PER_MINUTE="0",
        CODEHUB_LOG_LEVEL="warning",
    )
    return env


async def make_admin(db_url: str, data: Path) -> str:
    """An admin in the bench database; its API token."""
    from app import db
    from app.services.auth.users import AuthService
    from app.settings import load_settings

    settings = load_settings(environ={}, data_dir=data, database_url=db_url)
    engine = db.create_engine(settings)
    try:
        auth = AuthService(db.create_sessionmaker(engine), settings)
        user = await auth.create_user("bench", "bench-password-1", "admin")
        return (await auth.issue_token(user.id, name="bench"))[1]
    finally:
        await engine.dispose()


def nginx_conf(root: Path, two: int, one: int, hubs: list[int]) -> str:
    """nginx: ``two`` balances over every hub (least connections), ``one`` goes to the first hub only."""
    servers = " ".join(f"server 127.0.0.1:{port};" for port in hubs)
    location = """
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_read_timeout 3600s;"""
    return f"""
worker_processes 1;
worker_rlimit_nofile 65536;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fcgi;
  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream two {{ least_conn; {servers} keepalive 128; }}
  upstream one {{ server 127.0.0.1:{hubs[0]}; keepalive 128; }}
  server {{ listen 127.0.0.1:{two}; location / {{ proxy_pass http://two;{location} }} }}
  server {{ listen 127.0.0.1:{one}; location / {{ proxy_pass http://one;{location} }} }}
}}
"""


def start_nginx(stack: ExitStack, tmp: Path, hubs: list[int]) -> tuple[int, int, int]:
    """nginx in front of the hubs; (pid, port to both hubs, port to the first hub)."""
    two, one = rl.free_port(), rl.free_port()
    root = tmp / "nginx"
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "nginx.conf").write_text(nginx_conf(root, two, one, hubs))
    argv = [rl.NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"]
    proc = rl.spawn(stack, argv, tmp / "nginx.log")
    rl.wait_http(f"http://127.0.0.1:{two}/health")
    return proc.pid, two, one


def event_subscribers(port: int) -> int:
    """``codehub_event_subscribers`` of the hub process at ``port``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r"^codehub_event_subscribers ([\d.e+]+)$", text, re.M)
    return int(float(found.group(1))) if found else -1


def client_cpu() -> float:
    """CPU seconds of this process's finished children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Cluster:
    """The processes of one run and what the benches need to reach them."""

    def __init__(self, hubs: list[int], hub_pids: list[int], nginx: tuple[int, int, int], upstream_pid: int) -> None:
        self.hubs, self.hub_pids, self.upstream_pid = hubs, hub_pids, upstream_pid
        self.nginx_pid, self.nginx_two, self.nginx_one = nginx
        self.token = ""
        self.workspace = ""
        self.renamed: list[str] = []
        self.owner = 0

    def groups(self) -> dict[str, list[int]]:
        """Process groups whose CPU time is reported."""
        return {"hubs": self.hub_pids, "nginx": [self.nginx_pid], "upstream": [self.upstream_pid]}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every group (nginx with its worker)."""
        return {name: rl.cpu_seconds(pids) for name, pids in self.groups().items()}


# ---------------------------------------------------------------- SSE


async def publish_renames(
    client: httpx.AsyncClient, workspaces: list[str], rate: float, duration: float
) -> tuple[int, float]:
    """Rename the workspaces in turn, ``rate`` times a second for ``duration`` s, through one hub; (count, end).

    Each rename is sent on schedule without waiting for the previous answer (at most ``IN_FLIGHT`` open),
    so a slow answer delays no later event; events may then arrive out of order (the clients allow it).
    A last rename is sent once every other one was answered: receiving it means the rest were published.
    """
    total = int(rate * duration)
    limit = anyio.Semaphore(IN_FLIGHT)
    failures: list[str] = []

    async def rename(n: int) -> None:
        async with limit:
            name = f"b-{int(time.time() * 1e6)}-{n}"
            r = await client.patch(f"/api/workspaces/{workspaces[n % len(workspaces)]}", json={"name": name})
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")

    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        for n in range(total):
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            await limit.acquire()  # a full window holds the schedule back rather than piling up requests
            limit.release()
            tg.start_soon(rename, n)
    end = time.time()
    await rename(total)
    if failures:
        raise RuntimeError(f"{len(failures)} renames failed, first: {failures[0]}")
    return total + 1, end


async def run_sse(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    """Subscribers split across the hubs, renames published through hub A; the fan-out row."""
    count = args.subscribers
    per = [count // args.clients + (1 if i < count % args.clients else 0) for i in range(args.clients)]
    path = f"/api/events?topic=user:{cluster.owner}"
    ports = [cluster.nginx_two] * len(per) if args.sse_via == "nginx" else cluster.hubs
    script = [sys.executable, str(BENCH / "fanout.py"), "--role", "client", "--names", "--path", path]
    clients = [
        fo.Child([*script, "--port", str(ports[i % len(ports)]), "--count", str(n), "--token", cluster.token])
        for i, n in enumerate(per)
        if n
    ]
    headers = {"Authorization": f"Bearer {cluster.token}"}
    try:
        for client in clients:
            status = (await client.line(300)).split()
            if int(status[2]):
                print(f"  ({status[2]} connections failed)", flush=True)
        await anyio.sleep(1)
        split = [event_subscribers(port) for port in cluster.hubs]
        print(f"  event subscriptions per hub (SSE plus each hub's own listeners): {split}", flush=True)
        hub_a = fo.ProcStats(cluster.hub_pids[0])
        cpu0, client_stats = cluster.cpu(), [fo.ProcStats(c.proc.pid) for c in clients]
        clients0 = sum(c.cpu_seconds() for c in client_stats)
        user0, sys0 = hub_a.cpu_times()
        base = f"http://127.0.0.1:{cluster.hubs[0]}"
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api:
            start = time.time()
            published, end = await publish_renames(api, cluster.renamed, args.rate, args.duration)
        user1, sys1 = hub_a.cpu_times()
        hub_a.sample()
        cpu = {k: round(v - cpu0[k], 2) for k, v in cluster.cpu().items()}
        cpu["clients"] = round(sum(c.cpu_seconds() for c in client_stats) - clients0, 2)
        for client in clients:
            client.send(f"drain {published - 1} {args.drain}")
        reports = [json.loads(await client.line(args.drain + 60)) for client in clients]
    finally:
        for client in clients:
            client.stop()
    # renames the API could not take on schedule were not offered: delivered % is of what was published
    achieved = (published - 1) / (end - start)
    if achieved < 0.9 * args.rate:
        print(f"  (renames went through at {achieved:.1f}/s, not {args.rate:g}/s: the API was slower)", flush=True)
    row = fo.summarize(
        "sse", count, achieved, fo.merge(reports), (start, end), published, hub_a, (user1 - user0, sys1 - sys0)
    )
    row.update(split=split, cpu_s=cpu, seconds=round(end - start, 2), published=published, rate=round(achieved, 1))
    print(f"  CPU seconds during the publish window: {cpu} (load average {os.getloadavg()[0]:.1f})", flush=True)
    return row


# ---------------------------------------------------------------- relay


def run_relay(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    """HTTP 1 KiB through nginx to both hubs and to hub A alone, interleaved rounds; medians and CPU."""
    headers = {"Authorization": f"Bearer {cluster.token}"}
    prefix = f"/w/{cluster.workspace}/x"
    targets = {"two hubs": cluster.nginx_two, "one hub": cluster.nginx_one}
    for port in targets.values():  # warm-up: keep-alive pools, route and token caches
        rl.wrk(f"http://127.0.0.1:{port}{prefix}", 2, headers)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    names = list(targets)
    for round_ in range(args.rounds):
        for name in names[round_ % 2 :] + names[: round_ % 2]:
            cpu0, wrk0 = cluster.cpu(), client_cpu()
            run: dict[str, Any] = rl.wrk(f"http://127.0.0.1:{targets[name]}{prefix}", args.seconds, headers)
            run["cpu_s"] = {k: round(v - cpu0[k], 2) for k, v in cluster.cpu().items()}
            run["cpu_s"]["wrk"] = round(client_cpu() - wrk0, 2)
            runs[name].append(run)
            print(f"  relay via nginx, {name:>8}, round {round_ + 1}: {run}", flush=True)
    out: dict[str, Any] = {}
    for name, items in runs.items():
        out[name] = {
            "rps": round(statistics.median(r["rps"] for r in items)),
            "p99_ms": statistics.median(r["p99_ms"] for r in items),
            "non_2xx": sum(r["non_2xx"] for r in items),
            "requests": round(statistics.median(r["requests"] for r in items)),
            "cpu_s": {k: round(statistics.median(r["cpu_s"][k] for r in items), 2) for k in items[0]["cpu_s"]},
        }
    return out


# ---------------------------------------------------------------- orchestration


def prepare(stack: ExitStack, tmp: Path, db_url: str) -> Cluster:
    """Start the upstream, both hubs and nginx; a running workspace row whose IDE is the upstream."""
    up_port = rl.free_port()
    upstream = rl.spawn(stack, [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)], tmp / "up.log")
    rl.wait_http(f"http://127.0.0.1:{up_port}/")
    data = tmp / "hub"
    data.mkdir()
    token = anyio.run(make_admin, db_url, data)
    prefix, hub_id = f"codehub-bench-{secrets.token_hex(4)}", f"bench-{secrets.token_hex(3)}"
    ports = [rl.free_port(), rl.free_port()]
    stack.callback(lambda: anyio.run(fo.cleanup, REDIS_URL, prefix))  # runs after the hubs stopped
    pids = []
    for i, port in enumerate(ports):
        env = hub_env(data, db_url, prefix, hub_id, port)
        argv = [sys.executable, "-m", "app", "serve"]
        pids.append(rl.spawn(stack, argv, tmp / f"hub{i}.log", cwd=rl.ROOT, env=env).pid)
    for port in ports:
        rl.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
    cluster = Cluster(ports, pids, start_nginx(stack, tmp, ports), upstream.pid)
    cluster.token = token
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.post(f"http://127.0.0.1:{ports[0]}/api/workspaces", json={"name": "bench"}, headers=auth, timeout=30)
    r.raise_for_status()
    cluster.workspace, cluster.owner = r.json()["id"], r.json()["owner_id"]
    for i in range(RENAMED):
        r = httpx.post(f"http://127.0.0.1:{ports[0]}/api/workspaces", json={"name": f"r{i}"}, headers=auth, timeout=30)
        r.raise_for_status()
        cluster.renamed.append(r.json()["id"])
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(
            "UPDATE workspaces SET state = 'running', endpoint = %s WHERE id = %s",
            (f"127.0.0.1:{up_port}", cluster.workspace),
        )
    for port in (cluster.nginx_two, cluster.nginx_one):
        rl.wait_http(f"http://127.0.0.1:{port}/w/{cluster.workspace}/", headers=auth)
    return cluster


def result_rows(sse: dict[str, Any] | None, relay: dict[str, Any] | None, via: str) -> list[dict[str, Any]]:
    """The run as rows of the BENCH_RESULT protocol."""
    rows: list[dict[str, Any]] = []
    if sse is not None:
        where = f"{sse['subscribers']:,} SSE subs on 2 hubs (via {via})"
        pct, p99 = sse["delivered_pct"], sse["p99_ms"]
        rows += [
            {
                "name": f"{where}: delivered of offered",
                "value": pct,
                "unit": "%",
                "target": f">= {SSE_DELIVERED_PCT:g} %",
                "ok": pct >= SSE_DELIVERED_PCT,
            },
            {"name": f"{where}: renames published through hub A", "value": sse["rate"], "unit": "/s"},
            {"name": f"{where}: p50", "value": sse["p50_ms"], "unit": "ms"},
            {
                "name": f"{where}: p99",
                "value": p99,
                "unit": "ms",
                "target": f"< {SSE_P99_MS:g} ms",
                "ok": p99 < SSE_P99_MS,
            },
            {"name": f"{where}: lost", "value": sse["lost"], "unit": "events", "target": "0", "ok": sse["lost"] == 0},
        ]
        for group, seconds in sse["cpu_s"].items():
            rows.append({"name": f"{where}: CPU of {group} over {sse['seconds']:g} s", "value": seconds, "unit": "s"})
    if relay is not None:
        two, one = relay["two hubs"], relay["one hub"]
        ratio = two["rps"] / one["rps"] if one["rps"] else 0.0
        rows += [
            {"name": "relay HTTP 1 KiB, 50 conns, nginx -> 2 hubs", "value": two["rps"], "unit": "req/s"},
            {
                "name": "relay HTTP 1 KiB, 50 conns, nginx -> 1 hub",
                "value": one["rps"],
                "unit": "req/s",
                "reference": True,
            },
            {
                "name": "relay HTTP: 2 hubs / 1 hub",
                "value": round(ratio, 2),
                "unit": "x",
                "target": f">= {RELAY_RATIO:g}x",
                "ok": ratio >= RELAY_RATIO,
            },
            *scaling_rows(relay),
            {"name": "relay HTTP p99, 2 hubs", "value": two["p99_ms"], "unit": "ms"},
            {"name": "relay HTTP p99, 1 hub", "value": one["p99_ms"], "unit": "ms", "reference": True},
        ]
        for name, figures in relay.items():
            for group, seconds in figures["cpu_s"].items():
                rows.append({"name": f"relay, {name}: CPU of {group} per run", "value": seconds, "unit": "s"})
    return rows


def scaling_rows(relay: dict[str, Any]) -> list[dict[str, Any]]:
    """Whether the hubs scale, apart from the machine: each hub's CPU per request with two against one (a hub
    that keeps its cost gives 2x with a core of its own, so <= 2 / 1.7 means >= 1.7x where the hubs have the
    cores), and the 2/1 ratio this machine allows at all: its cores over the CPU every process (hubs, nginx,
    upstream, wrk) spends per request, against one hub's measured rate."""
    per_request = {
        name: {group: seconds / max(figures["requests"], 1) for group, seconds in figures["cpu_s"].items()}
        for name, figures in relay.items()
    }
    two, one = per_request["two hubs"], per_request["one hub"]
    hub_cost = two["hubs"] / one["hubs"] if one["hubs"] else 0.0
    ceiling = (os.cpu_count() or 1) / sum(two.values()) / relay["one hub"]["rps"] if relay["one hub"]["rps"] else 0.0
    return [
        {
            "name": "relay: each hub's CPU per request, 2 hubs / 1 hub",
            "value": round(hub_cost, 2),
            "unit": "x",
            "target": f"<= {2 / RELAY_RATIO:.2f}x",
            "ok": hub_cost <= 2 / RELAY_RATIO,
        },
        {
            "name": "relay: 2 hubs / 1 hub this machine allows (cores / CPU per request of every process)",
            "value": round(ceiling, 2),
            "unit": "x",
            "reference": True,
        },
    ]


def main() -> int:
    """Run the bench; prints figures as it goes and the ``BENCH_RESULT`` line last."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0, help="renames (events) per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    parser.add_argument("--clients", type=int, default=2, help="SSE client processes")
    parser.add_argument("--sse-via", choices=["nginx", "direct"], default="nginx")
    parser.add_argument("--seconds", type=int, default=8, help="seconds per relay run")
    parser.add_argument("--rounds", type=int, default=3, help="relay rounds (two and one hub each)")
    parser.add_argument("--skip", choices=["sse", "relay"], help="leave one part out")
    parser.add_argument("--quick", action="store_true", help="small and short (CI: proves the bench runs)")
    args = parser.parse_args()
    if args.quick:  # what was not given explicitly gets its small value
        small = {"subscribers": 300, "duration": 3.0, "drain": 3.0, "seconds": 2, "rounds": 1}
        for name, value in small.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    for tool in (rl.NGINX, rl.WRK):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is missing")
    sse = relay = None
    with tempfile.TemporaryDirectory(prefix="codehub-cluster-bench-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        db_url = stack.enter_context(database("postgres", tmp))
        print(f"Postgres {POSTGRES_URL.rsplit('/', 1)[0]}/…, Redis {REDIS_URL}, {os.cpu_count()} CPUs", flush=True)
        cluster = prepare(stack, tmp, db_url)
        if args.skip != "sse":
            print(f"\nSSE: {args.subscribers} subscribers via {args.sse_via}, {args.rate:g} renames/s", flush=True)
            sse = anyio.run(run_sse, args, cluster, backend_options={"use_uvloop": True})
        if args.skip != "relay":
            print("\nrelay HTTP 1 KiB, 50 connections:", flush=True)
            relay = run_relay(args, cluster)
    print("BENCH_RESULT " + json.dumps({"bench": "cluster", "rows": result_rows(sse, relay, args.sse_via)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
