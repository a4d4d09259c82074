"""Fan-out benchmark: one hub process, thousands of SSE subscribers, events published through Redis.

    uv run python bench/fanout.py                      # 1,000 and 5,000 subscribers, 50 events/s, 20 s
    uv run python bench/fanout.py --subscribers 1000 --duration 5 --no-ceiling
    uv run python bench/fanout.py --server raw         # bench-only servers, see bench/fanout_server.py

Processes (all on loopback): the hub (``codehub serve``: one uvicorn worker, SQLite, Redis), client
processes holding raw asyncio TCP connections to ``GET /api/events?topic=bench``, and this orchestrator,
which publishes ``{"t": <time.time()>, "n": <seq>}`` events through its own hub instance (Redis pub/sub,
as any other hub process would). Reported per run: delivered events/s within the publish window against
the offered rate, publish→receive p50/p99/max, lost (never received by the end of the drain), duplicates,
resets, hub RSS and hub CPU. Beside each run, the ceiling of the same design without HTTP: one process
with one Redis subscription fanned out to N in-process consumers (``hub.subscribe``), each building the
bytes an SSE response would write. Targets: 1,000 subscribers p99 < 50 ms; 5,000 subscribers
≥ 95 % of the offered rate, p99 < 500 ms; 0 lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPIC = "bench"
EVENT_RE = re.compile(rb'"data":\{"t":([0-9.e+-]+),"n":(\d+)\}')
# a workspace renamed to ``b-<publish time in microseconds>-<n>`` (bench/cluster.py publishes through the API)
NAME_RE = re.compile(rb'"name":"b-(\d+)-(\d+)"')
LAT_BUCKET = 10_000  # histogram resolution: 0.1 ms
RECV_BUCKET = 10  # receive-time resolution: 0.1 s


def percentile(hist: dict[int, int], q: float) -> float:
    """The q-quantile (seconds) of a latency histogram."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = q * (total - 1)
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return bucket / LAT_BUCKET
    return max(hist) / LAT_BUCKET


class Tally:
    """What one client process measured, merged across its connections."""

    def __init__(self) -> None:
        self.latency: Counter[int] = Counter()
        self.received_at: Counter[int] = Counter()
        self.events = 0
        self.duplicates = 0
        self.gaps = 0
        self.resets = 0

    def record(self, now: float, matches: list[tuple[Any, Any]], last_n: int) -> int:
        """Count a batch of (t, n) pairs (bytes or numbers) received at ``now``; returns the new last n."""
        count = len(matches)
        self.received_at[int(now * RECV_BUCKET)] += count
        lat = self.latency
        if int(matches[0][1]) == last_n + 1 and int(matches[-1][1]) == last_n + count:
            for t, _ in matches:  # the usual case: contiguous, in order
                lat[int((now - float(t)) * LAT_BUCKET)] += 1
            self.events += count
            return last_n + count
        for t, n_raw in matches:
            n = int(n_raw)
            if n <= last_n:
                self.duplicates += 1
                continue
            if n != last_n + 1:
                self.gaps += n - last_n - 1
            last_n = n
            lat[int((now - float(t)) * LAT_BUCKET)] += 1
            self.events += 1
        return last_n

    def record_unordered(self, now: float, matches: list[tuple[float, int]], seen: bytearray) -> int:
        """Count (t, n) pairs that may arrive out of order (concurrent publishers); ``seen`` marks the n
        one connection has received. Returns the highest n of the batch."""
        lat = self.latency
        self.received_at[int(now * RECV_BUCKET)] += len(matches)
        for t, n in matches:
            if n >= len(seen):
                seen.extend(bytes(n + 1024 - len(seen)))
            if seen[n]:
                self.duplicates += 1
                continue
            seen[n] = 1
            lat[int((now - t) * LAT_BUCKET)] += 1
            self.events += 1
        return max(n for _, n in matches)


class SSEProtocol(asyncio.Protocol):
    """One subscriber: sends the request, skips the headers, scans whole SSE frames for bench events."""

    def __init__(self, request: bytes, tally: Tally, on_headers: Callable[[bool], None], names: bool = False) -> None:
        self.request = request
        self.names = names  # events are renames (NAME_RE, possibly out of order), not bench events (EVENT_RE)
        self.seen = bytearray()
        self.tally = tally
        self.on_headers = on_headers
        self.buffer = b""
        self.headers_done = False
        self.last_n = -1
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.headers_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self.headers_done = True
            self.on_headers(buffer.startswith(b"HTTP/1.1 200"))
            buffer = buffer[end + 4 :]
        cut = max(buffer.rfind(b"\n\n") + 2, buffer.rfind(b"\r\n\r\n") + 4)  # frames end \n\n or \r\n\r\n
        if cut < 4:
            self.buffer = buffer
            return
        block, self.buffer = buffer[:cut], buffer[cut:]
        if self.names:
            renames = [(int(t) / 1e6, int(n)) for t, n in NAME_RE.findall(block)]
            if renames:
                self.last_n = max(self.last_n, self.tally.record_unordered(time.time(), renames, self.seen))
            matches = []
        else:
            matches = EVENT_RE.findall(block)
        if matches:
            self.last_n = self.tally.record(time.time(), matches, self.last_n)
        if b"event: stream.reset" in block:
            self.tally.resets += block.count(b"event: stream.reset")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.headers_done:
            self.on_headers(False)


async def read_command() -> str:
    """One line from the orchestrator (stdin)."""
    return (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()


async def wait_drained(last_ns: Callable[[], list[int]], target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and min(last_ns(), default=target) < target:
        await anyio.sleep(0.05)


async def client_main(port: int, count: int, token: str, path: str, names: bool = False) -> None:
    """Role ``client``: hold ``count`` SSE connections; on ``drain <last n> <timeout>`` report as JSON."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    conns: list[SSEProtocol] = []
    failed = 0
    limiter = anyio.CapacityLimiter(50)

    async def connect() -> None:
        nonlocal failed
        async with limiter:
            done = anyio.Event()
            ok: list[bool] = []

            def on_headers(good: bool) -> None:
                ok.append(good)
                done.set()

            proto = SSEProtocol(request, tally, on_headers, names)
            try:
                await loop.create_connection(lambda: proto, "127.0.0.1", port)
                with anyio.fail_after(60):
                    await done.wait()
            except (OSError, TimeoutError):
                ok.append(False)
            if ok and ok[0]:
                conns.append(proto)
            else:
                failed += 1

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(connect)
    print(f"connected {len(conns)} {failed}", flush=True)
    command = await read_command()
    _, target, timeout = command.split()
    await wait_drained(lambda: [c.last_n for c in conns if not c.closed], int(target), float(timeout))
    report = {
        "connections": len(conns),
        "failed": failed,
        "closed": sum(c.closed for c in conns),
        "events": tally.events,
        "duplicates": tally.duplicates,
        "gaps": tally.gaps,
        "resets": tally.resets,
        "latency": dict(tally.latency),
        "received_at": dict(tally.received_at),
    }
    print(json.dumps(report), flush=True)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


async def ceiling_main(count: int, redis_url: str, prefix: str) -> None:
    """Role ``ceiling``: the same hub without HTTP, ``count`` in-process consumers of one subscription."""
    from app.settings import load_settings
    from app.streams.events.backend import open_hub
    from app.streams.events.fanout import PING
    from app.streams.events.hub import tune_gc_for_streaming

    settings = load_settings(environ={}, redis_url=redis_url, redis_prefix=prefix, log_level="warning")
    tally = Tally()
    last: list[int] = []
    async with open_hub(settings) as hub, anyio.create_task_group() as tg:
        ready = anyio.Event()
        subscribed = 0

        async def consume(slot: int) -> None:
            nonlocal subscribed
            async with hub.subscribe([TOPIC]) as sub:
                subscribed += 1
                if subscribed == count:
                    ready.set()
                while (batch := await sub.next_batch()) is not None:
                    now = time.time()
                    b"".join([item.frame for item in batch])  # what the SSE response would write
                    matches = [(i.event.data["t"], i.event.data["n"]) for i in batch if i is not PING]
                    if matches:
                        last[slot] = tally.record(now, matches, last[slot])

        for slot in range(count):
            last.append(-1)
            tg.start_soon(consume, slot)
        await ready.wait()
        tune_gc_for_streaming()  # as `codehub serve` does
        print(f"connected {count} 0", flush=True)
        _, target, timeout = (await read_command()).split()
        await wait_drained(lambda: last, int(target), float(timeout))
        report = {
            "connections": count,
            "failed": 0,
            "closed": 0,
            "events": tally.events,
            "duplicates": tally.duplicates,
            "gaps": tally.gaps,
            "resets": tally.resets + hub.stats()["dropped"],
            "latency": dict(tally.latency),
            "received_at": dict(tally.received_at),
        }
        print(json.dumps(report), flush=True)
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------- orchestrator


class ProcStats:
    """Peak RSS and CPU time of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_mb = 0.0
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used so far."""
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds used so far; system time is mostly socket writes here."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / self.tick, int(fields[12]) / self.tick

    def sample(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                self.peak_rss_mb = max(self.peak_rss_mb, rss)
                return rss
        return 0.0


class Child:
    """A child process of this script with line-based stdin/stdout, in its own session.

    Linux autogroup scheduling shares CPU between sessions, not processes: in one session the hub would
    share one slice with its own load generators; in separate sessions each gets a slice, as a hub service
    and its remote clients would. ``--nice`` sets each child's autogroup nice (a process nice only counts
    inside its group).
    """

    nice = 0

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        if Child.nice:
            try:
                Path(f"/proc/{self.proc.pid}/autogroup").write_text(str(Child.nice))
            except OSError as exc:
                print(f"  (could not set the autogroup nice of {self.proc.pid}: {exc})", flush=True)

    async def line(self, timeout: float) -> str:
        with anyio.fail_after(timeout):
            line = await anyio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"child {self.proc.args} exited ({self.proc.poll()})")
        return line.strip()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"latency": Counter(), "received_at": Counter()}
    for report in reports:
        for key, value in report.items():
            if key in ("latency", "received_at"):
                out[key].update({int(k): v for k, v in value.items()})
            else:
                out[key] = out.get(key, 0) + value
    return out


async def publish_for(
    hub: Any, rate: float, duration: float, proc: ProcStats
) -> tuple[int, float, float, tuple[float, float]]:
    """Publish ``rate`` events/s for ``duration`` s; returns (count, start, end, hub (user, system) CPU s)."""
    total = int(rate * duration)
    user0, sys0 = proc.cpu_times()
    start = time.time()
    began = time.monotonic()
    for n in range(total):
        delay = began + n / rate - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)
        await hub.publish(TOPIC, "bench", {"t": time.time(), "n": n})
        if n % 10 == 0:
            proc.sample()
    end = time.time()
    user1, sys1 = proc.cpu_times()
    return total, start, end, (user1 - user0, sys1 - sys0)


def summarize(
    label: str,
    subs: int,
    rate: float,
    result: dict[str, Any],
    window: tuple[float, float],
    published: int,
    proc: ProcStats,
    cpu_split: tuple[float, float],
) -> dict[str, Any]:
    start, end = window
    cpu = sum(cpu_split)
    in_window = sum(v for k, v in result["received_at"].items() if start * RECV_BUCKET <= k < end * RECV_BUCKET)
    offered = subs * rate
    delivered = in_window / (end - start)
    expected = published * result["connections"]
    hist = result["latency"]
    row = {
        "run": label,
        "subscribers": result["connections"],
        "failed_connects": result["failed"],
        "offered_per_s": offered,
        "delivered_per_s": round(delivered),
        "delivered_pct": round(100 * delivered / offered, 1) if offered else 0,
        "p50_ms": round(percentile(hist, 0.50) * 1000, 1),
        "p99_ms": round(percentile(hist, 0.99) * 1000, 1),
        "max_ms": round(max(hist, default=0) / LAT_BUCKET * 1000, 1),
        "lost": expected - result["events"],
        "duplicates": result["duplicates"],
        "resets": result["resets"],
        "rss_mb": round(proc.peak_rss_mb, 1),
        "cpu_pct": round(100 * cpu / (end - start), 1),
        "cpu_us_per_delivery": round(1e6 * cpu / max(1, result["events"]), 2),
        "cpu_system_pct": round(100 * cpu_split[1] / cpu, 1) if cpu else 0.0,
    }
    print(
        f"{label:<9} {row['subscribers']:>5} subs  delivered {row['delivered_per_s']:>7}/s of {offered:>7.0f}/s "
        f"({row['delivered_pct']:5.1f} %)  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
        f"max {row['max_ms']:7.1f} ms  lost {row['lost']}  dup {row['duplicates']}  resets {row['resets']}  "
        f"RSS {row['rss_mb']:.0f} MB  CPU {row['cpu_pct']:.0f} % ({row['cpu_us_per_delivery']:.1f} us/delivery, "
        f"{row['cpu_system_pct']:.0f} % of it in the kernel)",
        flush=True,
    )
    return row


async def run_clients(
    args: argparse.Namespace, hub: Any, port: int, token: str, path: str, subs: int, server: ProcStats
) -> dict[str, Any]:
    per = [subs // args.clients + (1 if i < subs % args.clients else 0) for i in range(args.clients)]
    script = str(Path(__file__).resolve())
    clients = [
        Child(
            [
                sys.executable,
                script,
                "--role",
                "client",
                "--port",
                str(port),
                "--count",
                str(n),
                "--token",
                token,
                "--path",
                path,
            ]
        )
        for n in per
        if n
    ]
    try:
        for client in clients:
            status = (await client.line(180)).split()
            if int(status[2]):
                print(f"  ({status[2]} connections failed)", flush=True)
        await anyio.sleep(1)
        server.peak_rss_mb = 0
        client_stats = [ProcStats(c.proc.pid) for c in clients]
        client_cpu0 = sum(c.cpu_seconds() for c in client_stats)
        published, start, end, cpu = await publish_for(hub, args.rate, args.duration, server)
        client_cpu = sum(c.cpu_seconds() for c in client_stats) - client_cpu0
        for client in clients:
            client.send(f"drain {published - 1} {args.drain}")
        reports = [json.loads(await client.line(args.drain + 60)) for client in clients]
        server.sample()
    finally:
        for client in clients:
            client.stop()
    row = summarize("sse", subs, args.rate, merge(reports), (start, end), published, server, cpu)
    row["client_cpu_pct"] = round(100 * client_cpu / (end - start), 1)
    row["load_avg_1m"] = os.getloadavg()[0]
    print(
        f"          clients used {row['client_cpu_pct']:.0f} % CPU; machine load average {row['load_avg_1m']:.1f} "
        f"on {os.cpu_count()} CPUs",
        flush=True,
    )
    return row


async def run_ceiling(args: argparse.Namespace, hub: Any, redis_url: str, prefix: str, subs: int) -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    child = Child(
        [
            sys.executable,
            script,
            "--role",
            "ceiling",
            "--count",
            str(subs),
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
        ]
    )
    try:
        await child.line(120)
        stats = ProcStats(child.proc.pid)
        published, start, end, cpu = await publish_for(hub, args.rate, args.duration, stats)
        child.send(f"drain {published - 1} {args.drain}")
        report = json.loads(await child.line(args.drain + 60))
    finally:
        child.stop()
    return summarize("no-http", subs, args.rate, merge([report]), (start, end), published, stats, cpu)


def prepare_database(data_dir: Path) -> tuple[str, str]:
    """A migrated SQLite database with an admin; returns (database URL, admin token)."""
    from app import db
    from app.services.auth.users import AuthService
    from app.settings import load_settings

    url = f"sqlite+aiosqlite:///{data_dir / 'bench.db'}"
    db.upgrade(url)

    async def make_admin() -> str:
        settings = load_settings(environ={}, data_dir=data_dir, database_url=url)
        engine = db.create_engine(settings)
        try:
            auth = AuthService(db.create_sessionmaker(engine), settings)
            user = await auth.create_user("bench", "bench-password-1", "admin")
            return (await auth.issue_token(user.id, name="bench"))[1]
        finally:
            await engine.dispose()

    return url, anyio.run(make_admin)


def start_server(args: argparse.Namespace, data_dir: Path, db_url: str, prefix: str, port: int) -> Child:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(data_dir),
        CODEHUB_DATABASE_URL=db_url,
        CODEHUB_REDIS_URL=args.redis_url,
        CODEHUB_REDIS_PREFIX=prefix,
        CODEHUB_PORT=str(port),
        CODEHUB_LOG_LEVEL="warning",
        CODEHUB_RUNTIME="local",
        CODEHUB_DOCKER_URL="none",
        CODEHUB_API_RATE_PER_MINUTE="0",
        CODEHUB_HUB_ID=f"bench-{secrets.token_hex(3)}",
    )
    if args.server == "app":
        cmd = [sys.executable, "-m", "app", "serve"]
    else:
        cmd = [sys.executable, str(Path(__file__).with_name("fanout_server.py")), args.server, str(port)]
    return Child(cmd, env=env)


async def wait_ready(url: str, server: Child) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        with anyio.fail_after(60):
            while True:
                if server.proc.poll() is not None:
                    raise RuntimeError("the hub server exited")
                try:
                    if (await client.get(f"{url}/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.2)


async def orchestrate(args: argparse.Namespace, db_url: str, token: str, data_dir: Path) -> list[dict[str, Any]]:
    from app.settings import load_settings
    from app.streams.events.backend import open_hub

    prefix = f"codehub-bench-{secrets.token_hex(4)}"
    port = args.port
    rows: list[dict[str, Any]] = []
    server = start_server(args, data_dir, db_url, prefix, port)
    settings = load_settings(environ={}, redis_url=args.redis_url, redis_prefix=prefix, log_level="warning")
    try:
        await wait_ready(f"http://127.0.0.1:{port}", server)
        server_stats = ProcStats(server.proc.pid)
        path = f"/api/events?topic={TOPIC}" if args.server.startswith("app") else f"/events?topic={TOPIC}"
        async with open_hub(settings) as hub:
            for subs in args.subscribers:
                print(
                    f"\n{subs} subscribers, {args.rate:g} events/s for {args.duration:g} s (server: {args.server})",
                    flush=True,
                )
                rows.append(await run_clients(args, hub, port, token, path, subs, server_stats))
                if args.ceiling:
                    rows.append(await run_ceiling(args, hub, args.redis_url, prefix, subs))
    finally:
        server.stop()
        await cleanup(args.redis_url, prefix)
    return rows


async def cleanup(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="1000,5000", help="comma-separated subscriber counts")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing per run")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--server", default="app", choices=["app", "raw", "litestar-sse", "app-profile", "app-diag"])
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the no-HTTP runs")
    parser.add_argument("--redis-url", default=os.environ.get("CODEHUB_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--nice", type=int, default=0, help="autogroup nice of the bench's processes (e.g. -10 on a busy shared box)"
    )
    parser.add_argument("--json", help="also write the result rows to this file")
    parser.add_argument("--role", default="orchestrator", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--names", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    uvloop = {"use_uvloop": True}
    if args.role == "client":
        anyio.run(client_main, args.port, args.count, args.token, args.path, args.names, backend_options=uvloop)
        return
    if args.role == "ceiling":
        anyio.run(ceiling_main, args.count, args.redis_url, args.prefix, backend_options=uvloop)
        return
    args.subscribers = [int(s) for s in args.subscribers.split(",") if s]
    Child.nice = args.nice
    if not args.port:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="codehub-bench-") as tmp:
        db_url, token = prepare_database(Path(tmp))
        rows = anyio.run(orchestrate, args, db_url, token, Path(tmp), backend_options=uvloop)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print("BENCH_RESULT " + json.dumps({"bench": "fanout", "rows": result_rows(rows, args.server)}), flush=True)


P99_TARGET_MS = {1000: 50.0, 5000: 500.0}
DELIVERED_TARGET_PCT = {5000: 95.0}


def result_rows(rows: list[dict[str, Any]], server: str) -> list[dict[str, Any]]:
    """The run's rows in the bench/README.md protocol (the targets for 1,000 and 5,000 subscribers)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        subs = row["subscribers"]
        if row["run"] != "sse":
            where = f"{subs:,} subs, no HTTP (one Redis subscription, in-process consumers)"
            out.append({"name": f"{where}: p99", "value": row["p99_ms"], "unit": "ms", "reference": True})
            continue
        where = f"{subs:,} subs via GET /api/events ({server})" if server != "app" else f"{subs:,} subs via SSE"
        p99_target = P99_TARGET_MS.get(subs)
        pct_target = DELIVERED_TARGET_PCT.get(subs)
        out += [
            {
                "name": f"{where}: delivered of offered",
                "value": row["delivered_pct"],
                "unit": "%",
                **({"target": f">= {pct_target:g} %", "ok": row["delivered_pct"] >= pct_target} if pct_target else {}),
            },
            {"name": f"{where}: p50", "value": row["p50_ms"], "unit": "ms"},
            {
                "name": f"{where}: p99",
                "value": row["p99_ms"],
                "unit": "ms",
                **({"target": f"< {p99_target:g} ms", "ok": row["p99_ms"] < p99_target} if p99_target else {}),
            },
            {"name": f"{where}: lost", "value": row["lost"], "unit": "events", "target": "0", "ok": row["lost"] == 0},
            {"name": f"{where}: hub RSS", "value": row["rss_mb"], "unit": "MB"},
            {"name": f"{where}: hub CPU per delivery", "value": row["cpu_us_per_delivery"], "unit": "us"},
        ]
    return out


if __name__ == "__main__":
    main()
