"""Bench (the spine): ``GET /api/workspaces`` (a page of 50 rows) on one uvicorn worker, served as
``codehub serve`` serves the hub (its HTTP protocol, uvicorn options and GC tuning).

For each database (SQLite, Postgres; Postgres + Redis too when Redis answers, the compose setup): a fixed
offered load of 500 req/s (``hey -z 10s -c 50 -q 10``): p50 and p99; and saturation with 50 concurrent
connections (``wrk``): req/s. Beside it, on the same server in the same run: a trivial Litestar JSON route
(a bare Litestar app mounted by ``bench/_api_app.py``, the framework's ceiling) and the hub's ``/health``
(our middleware, no database). Production settings otherwise: JSON access log at info (to /dev/null),
metrics, rate limit (the default rate with a burst no run can empty: the limiter runs with the default's
lease size and never refuses).

hey's workers tick together, so "500 req/s" arrives as 50 requests at once every 100 ms: the p99 is about
the time one process takes to serve a burst of 50 (50 x its CPU per request, more when the machine is busy).

Targets: p99 < 20 ms at 500 req/s on Postgres; saturation >= 25 % of the trivial route. The server's CPU
time per request (from /proc, during each wrk run) is printed too: on a shared machine it is the figure that
does not depend on what else runs.

Run: ``uv run python bench/api.py [--duration 10] [--db sqlite,postgres,postgres+redis]``. Last line:
``BENCH_RESULT {json}`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import db  # noqa: E402
from app.models import User, Workspace, utcnow  # noqa: E402
from app.services.auth.users import AuthService  # noqa: E402
from app.settings import load_settings  # noqa: E402

POSTGRES_URL = os.environ.get("CODEHUB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CODEHUB_TEST_REDIS", "redis://127.0.0.1:6379/0")
LIST_PATH = "/api/workspaces"
TRIVIAL_PATH = "/bench/trivial"
OWN_WORKSPACES = 60
OTHER_WORKSPACES = 200


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def database(kind: str, tmp: Path):  # type: ignore[no-untyped-def]
    """A fresh migrated database URL of ``kind`` (a new Postgres database is dropped afterwards)."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        db.upgrade(url)
        yield url
        return
    admin = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"codehub_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    try:
        db.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def seed(url: str, data_dir: Path) -> str:
    """The bench user with ``OWN_WORKSPACES`` workspaces (others own more); returns its API token."""
    settings = load_settings(environ={}, database_url=url, data_dir=data_dir)
    engine = db.create_engine(settings)
    try:
        auth = AuthService(db.create_sessionmaker(engine), settings)
        user = await auth.create_user("bench", "bench-password-1", "user")
        other = await auth.create_user("other", "other-password-1", "user")
        _, token = await auth.issue_token(user.id, name="bench")
        now = utcnow()
        async with db.create_sessionmaker(engine)() as session:
            for i in range(OWN_WORKSPACES + OTHER_WORKSPACES):
                owner: User = user if i < OWN_WORKSPACES else other
                session.add(
                    Workspace(
                        owner_id=owner.id,
                        name=f"ws-{i}",
                        image="codercom/code-server:latest",
                        git_url=f"https://git.example.com/team/repo-{i}.git" if i % 3 == 0 else None,
                        cpu=1.0,
                        memory_mb=2048,
                        state=("created", "running", "stopped")[i % 3],
                        created_at=now - timedelta(seconds=i),
                    )
                )
            await session.commit()
        return token
    finally:
        await engine.dispose()


@contextmanager
def server(env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The hub on one uvicorn worker in a separate process, served as ``codehub serve`` serves it; yields its
    base URL and pid."""
    port = free_port()
    env = dict(env, CODEHUB_HOST="127.0.0.1", CODEHUB_PORT=str(port))
    cmd = [sys.executable, "-m", "bench._api_app"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def hey(url: str, token: str, duration: float, concurrency: int, per_worker_qps: float) -> dict[str, float]:
    """Fixed offered load with hey: p50/p99 (ms), achieved req/s, non-2xx count."""
    cmd = ["hey", "-z", f"{duration:g}s", "-c", str(concurrency), "-q", f"{per_worker_qps:g}"]
    cmd += ["-H", f"Authorization: Bearer {token}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout

    def pct(p: str) -> float:
        match = re.search(rf"\s{p}% in ([\d.]+) secs", out)
        return float(match.group(1)) * 1000 if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    bad = sum(int(n) for code, n in codes if not code.startswith("2"))
    return {"p50": pct("50"), "p99": pct("99"), "rps": float(rps.group(1)) if rps else 0.0, "errors": bad}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, token: str, duration: float, connections: int, pid: int | None = None) -> dict[str, float]:
    """Saturation with wrk: req/s, non-2xx responses, p99, and the server's CPU µs per request (``pid``)."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration:g}s", "--latency"]
    cmd += ["-H", f"Authorization: Bearer {token}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    total = re.search(r"(\d+) requests in", out)
    cpu = (cpu_seconds(pid) - cpu_before) if pid else 0.0
    return {
        "cpu_us": cpu / int(total.group(1)) * 1e6 if pid and total and int(total.group(1)) else float("nan"),
        "rps": float(rps.group(1)) if rps else 0.0,
        "errors": int(bad.group(1)) if bad else 0,
        "p99": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


def check_page(url: str, token: str) -> None:
    """The bench route answers a full page of 50 of the bench user's workspaces."""
    r = httpx.get(f"{url}{LIST_PATH}", headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    assert len(r.json()["items"]) == 50, r.text[:200]
    assert httpx.get(f"{url}{TRIVIAL_PATH}").json()["ok"] is True


def run_config(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement for one database configuration."""
    with (
        tempfile.TemporaryDirectory(prefix="codehub-bench-api-") as tmp,
        database(kind.split("+")[0], Path(tmp)) as url,
    ):
        token = anyio.run(seed, url, Path(tmp))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
        env.update(
            CODEHUB_DATA_DIR=tmp,
            CODEHUB_DATABASE_URL=url,
            CODEHUB_RUNTIME="local",
            CODEHUB_DOCKER_URL="none",
            CODEHUB_LOG_LEVEL="info",
            CODEHUB_LOG_FORMAT="json",
            CODEHUB_HUB_ID=f"bench-{secrets.token_hex(3)}",
            CODEHUB_API_RATE_PER_MINUTE="600",  # the default rate, so leases are the default's (10 tokens)
            CODEHUB_API_RATE_BURST="1000000000",  # a bucket this run cannot empty
            PYTHONPATH=str(ROOT),
        )
        if kind.endswith("+redis"):
            env.update(CODEHUB_REDIS_URL=REDIS_URL, CODEHUB_REDIS_PREFIX=f"codehub-bench-{secrets.token_hex(3)}")
        with server(env) as (base, pid):
            check_page(base, token)
            wrk(f"{base}{LIST_PATH}", token, 2, args.connections)  # warm up
            fixed = hey(f"{base}{LIST_PATH}", token, args.duration, args.connections, args.rate / args.connections)
            sat = wrk(f"{base}{LIST_PATH}", token, args.duration, args.connections, pid)
            trivial = wrk(f"{base}{TRIVIAL_PATH}", token, args.duration, args.connections, pid)
            health = wrk(f"{base}/health", token, args.duration, args.connections, pid)
    return {"kind": kind, "fixed": fixed, "saturation": sat, "trivial": trivial, "health": health}


def rows_of(result: dict[str, Any], rate: float, connections: int) -> list[dict[str, Any]]:
    """BENCH_RESULT rows of one configuration."""
    kind, fixed, sat, trivial = result["kind"], result["fixed"], result["saturation"], result["trivial"]
    share = sat["rps"] / trivial["rps"] if trivial["rps"] else 0.0
    on_pg = kind.startswith("postgres")
    return [
        {"name": f"{kind}: list p50 @ {rate:g} req/s", "value": round(fixed["p50"], 2), "unit": "ms"},
        {
            "name": f"{kind}: list p99 @ {rate:g} req/s",
            "value": round(fixed["p99"], 2),
            "unit": "ms",
            "target": "< 20 ms (Postgres)" if on_pg else "",
            "ok": fixed["p99"] < 20 if on_pg else None,
        },
        {
            "name": f"{kind}: list achieved rate (non-2xx {fixed['errors']})",
            "value": round(fixed["rps"]),
            "unit": "req/s",
        },
        {
            "name": f"{kind}: list saturation, {connections} conns (non-2xx {sat['errors']})",
            "value": round(sat["rps"]),
            "unit": "req/s",
        },
        {
            "name": f"{kind}: list saturation / trivial route",
            "value": round(share * 100, 1),
            "unit": "%",
            "target": ">= 25 %",
            "ok": share >= 0.25,
        },
        {
            "name": f"{kind}: trivial Litestar JSON route",
            "value": round(trivial["rps"]),
            "unit": "req/s",
            "reference": True,
        },
        {"name": f"{kind}: hub /health (middleware, no DB)", "value": round(result["health"]["rps"]), "unit": "req/s"},
        {"name": f"{kind}: server CPU per list request", "value": round(sat["cpu_us"]), "unit": "us"},
        {
            "name": f"{kind}: server CPU per trivial request",
            "value": round(trivial["cpu_us"]),
            "unit": "us",
            "reference": True,
        },
        {"name": f"{kind}: server CPU per /health request", "value": round(result["health"]["cpu_us"]), "unit": "us"},
        {
            "name": f"{kind}: CPU-normalised list / trivial (load-independent)",
            "value": round(100 * trivial["cpu_us"] / sat["cpu_us"], 1) if sat["cpu_us"] else None,
            "unit": "%",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rate", type=float, default=500.0, help="offered load (req/s) of the fixed-rate run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--db", default="sqlite,postgres,postgres+redis", help="comma-separated configurations")
    args = parser.parse_args()
    for tool in ("hey", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    rows: list[dict[str, Any]] = []
    saturation: dict[str, float] = {}
    cpu_per_list: dict[str, float] = {}
    for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
        if kind.endswith("+redis"):
            try:
                import redis

                redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
            except Exception as exc:
                print(f"skip {kind}: Redis does not answer ({exc})", flush=True)
                continue
        print(f"== {kind}", flush=True)
        result = run_config(kind, args)
        saturation[kind] = result["saturation"]["rps"]
        cpu_per_list[kind] = result["saturation"]["cpu_us"]
        extra = []
        if kind == "postgres+redis" and saturation.get("postgres"):
            share = saturation[kind] / saturation["postgres"]
            extra.append(
                {
                    "name": "postgres+redis: list saturation / postgres without Redis",
                    "value": round(share * 100, 1),
                    "unit": "%",
                    "target": ">= 60 %",
                    "ok": share >= 0.6,
                }
            )
            if cpu_per_list.get("postgres") and cpu_per_list[kind]:
                extra.append(
                    {
                        "name": "postgres+redis: CPU per list request, postgres / postgres+redis (load-independent)",
                        "value": round(100 * cpu_per_list["postgres"] / cpu_per_list[kind], 1),
                        "unit": "%",
                    }
                )
        for row in rows_of(result, args.rate, args.connections) + extra:
            rows.append(row)
            mark = {True: "ok", False: "MISSED", None: ""}[row.get("ok")]
            print(f"  {row['name']:<58} {row['value']:>10} {row['unit']:<6} {row.get('target', '')} {mark}", flush=True)
    print("BENCH_RESULT " + json.dumps({"bench": "api", "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
