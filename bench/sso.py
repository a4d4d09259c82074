"""Bench: the single sign-on round trip through the hub, excluding the OpenID provider's own time.

A real provider (node-oidc-provider, ``tests/oidc_provider``) and ``codehub serve`` (one process, SQLite or
Postgres) on loopback. Each round is one browser (a fresh cookie jar) signing in: ``GET /auth/oidc/login``
(the hub: rate limit, the signed cookie, the redirect), the provider's form, then ``GET /auth/oidc/callback``
(the hub: the state recorded once, the code exchanged, the ID token verified, userinfo only when the ID token
lacks the groups, then user, groups, session and audit in one transaction). The provider reports how long it
spent on each token, userinfo and JWKS request (``/_test/timings``); the hub's share of a round is the time of
its two requests minus that. Rounds run one after another, so the figure is latency, not throughput. The
hub's CPU time (``/proc/<pid>/stat``) is read around its two requests: CPU ms per sign-in.

The provider puts the groups in the ID token (as Keycloak, Entra ID and Okta do); ``--userinfo`` keeps them
in userinfo only (OpenID Core 5.4 strictly), which costs the hub one more request per sign-in.

Target: p50 added by the hub <= 20 ms. Each round also times two plain requests (``GET /api/auth/methods``) by
a fresh browser, with the hub's CPU for them: the reference measured in the same run, for loaded machines.

Run: ``uv run python bench/sso.py [--rounds 100] [--db sqlite|postgres] [--userinfo] [--quick]``. Last line:
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import psycopg
from run_all import table  # bench/ is the script's directory: the one table every bench prints

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_DIR = ROOT / "tests" / "oidc_provider"
POSTGRES_URL = os.environ.get("CODEHUB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FORM_ACTION_RE = re.compile(r'<form[^>]*action="([^"]+)"')
TARGET_MS = 20.0


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``url`` until it answers 200 (or ``proc`` exits)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


@contextmanager
def process(
    cmd: list[str], env: dict[str, str], cwd: Path, ready_url: str, what: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` until the block ends, once ``ready_url`` answers."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready_url, proc, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A database URL of ``kind`` for the hub (a new Postgres database is dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        return
    admin = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"codehub_bench_sso_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """CPU time (user + system, all threads) the process ``pid`` has used so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def one_round(hub: str, provider: str, control: dict[str, str], pid: int) -> dict[str, float]:
    """One sign-in by a fresh browser; the hub's and the provider's milliseconds, the hub's CPU ms."""
    with httpx.Client(base_url=hub, timeout=30) as browser:
        cpu = cpu_ms(pid)
        started = time.perf_counter()
        r = browser.get("/auth/oidc/login")
        start_ms = (time.perf_counter() - started) * 1000
        cpu = cpu_ms(pid) - cpu
        assert r.status_code == 303, r.text
        location = r.headers["location"]
        while "/auth/oidc/callback" not in location:
            r = browser.get(location)
            if r.status_code == 200:
                action = unescape(FORM_ACTION_RE.search(r.text).group(1))  # type: ignore[union-attr]
                r = browser.post(
                    str(httpx.URL(location).join(action)), data={"login": "alice", "password": "alice-pass"}
                )
            location = str(httpx.URL(location).join(r.headers["location"]))
        httpx.post(f"{provider}/_test/timings", json={}, headers=control)  # what the form round took: dropped
        cpu -= cpu_ms(pid)
        started = time.perf_counter()
        r = browser.get(location)
        callback_ms = (time.perf_counter() - started) * 1000
        cpu += cpu_ms(pid)
        assert r.status_code == 303 and "codehub_session" in r.cookies, r.text
    timings = httpx.post(f"{provider}/_test/timings", json={}, headers=control).json()["timings"]
    provider_ms = sum(t["ms"] for t in timings)
    with httpx.Client(base_url=hub, timeout=30) as browser:  # the reference: two plain requests, fresh browser
        plain_cpu = cpu_ms(pid)
        started = time.perf_counter()
        assert browser.get("/api/auth/methods").status_code == 200
        assert browser.get("/api/auth/methods").status_code == 200
        plain_ms = (time.perf_counter() - started) * 1000
        plain_cpu = cpu_ms(pid) - plain_cpu
    return {
        "start": start_ms,
        "callback": callback_ms,
        "provider": provider_ms,
        "plain": plain_ms,
        "cpu": cpu,
        "plain_cpu": plain_cpu,
        "userinfo": float(any(t["path"] == "/me" for t in timings)),
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start the provider and the hub, sign in ``args.rounds`` times; the BENCH_RESULT rows."""
    node = shutil.which("node")
    if node is None or not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        print("node or the provider's packages are missing (scripts/services.sh installs them)")
        return [{"name": "sign-in: hub's share p50", "value": None, "unit": "ms", "target": f"<= {TARGET_MS:g} ms"}]
    provider_port, hub_port = free_port(), free_port()
    provider, hub = f"http://127.0.0.1:{provider_port}", f"http://127.0.0.1:{hub_port}"
    client_id, client_secret, control = "bench-hub", secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    provider_env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    provider_env.update(
        PORT=str(provider_port),
        CLIENT_ID=client_id,
        CLIENT_SECRET=client_secret,
        REDIRECT_URIS=f"{hub}/auth/oidc/callback",
        POST_LOGOUT_REDIRECT_URIS=f"{hub}/",
        CONTROL_TOKEN=control,
        ID_TOKEN_CLAIMS="0" if args.userinfo else "1",
    )
    with tempfile.TemporaryDirectory(prefix="codehub-bench-sso-") as tmp, database(args.db, Path(tmp)) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
        env.update(
            CODEHUB_DATA_DIR=tmp,
            CODEHUB_DATABASE_URL=url,
            CODEHUB_RUNTIME="local",
            CODEHUB_DOCKER_URL="none",
            CODEHUB_LOG_LEVEL="warning",
            CODEHUB_HUB_ID=f"bench-{secrets.token_hex(3)}",
            CODEHUB_PUBLIC_URL=hub,
            CODEHUB_SECRET_KEY=secrets.token_hex(32),
            CODEHUB_LOGIN_RATE_PER_MINUTE="0",
            CODEHUB_OIDC_ISSUER=provider,
            CODEHUB_OIDC_CLIENT_ID=client_id,
            CODEHUB_OIDC_CLIENT_SECRET=client_secret,
            CODEHUB_OIDC_SCOPES="openid,profile,email,groups",
            CODEHUB_OIDC_ADMIN_GROUPS="hub-admins",
        )
        subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
        serve = [sys.executable, "-m", "app", "serve", "--port", str(hub_port)]
        discovery = f"{provider}/.well-known/openid-configuration"
        with (
            process([node, "provider.mjs"], provider_env, PROVIDER_DIR, discovery, "the provider"),
            process(serve, env, ROOT, f"{hub}/health", "the hub") as hub_proc,
        ):
            headers = {"X-Control-Token": control}
            for _ in range(args.warmup):
                one_round(hub, provider, headers, hub_proc.pid)
            rounds = [one_round(hub, provider, headers, hub_proc.pid) for _ in range(args.rounds)]
    added = [r["start"] + r["callback"] - r["provider"] for r in rounds]
    p50, p99 = statistics.median(added), percentile(added, 0.99)
    plain = statistics.median(r["plain"] for r in rounds)
    cpu = statistics.fmean(r["cpu"] for r in rounds)  # ticks of 10 ms: only the mean of many rounds means much
    plain_cpu = statistics.fmean(r["plain_cpu"] for r in rounds)
    mode = "claims in userinfo" if args.userinfo else "groups in the ID token"
    where = f"{args.db}, {mode}"
    print(f"{args.rounds} sign-ins ({where}): hub's share p50 {p50:.1f} ms, p99 {p99:.1f} ms, CPU {cpu:.1f} ms")
    return [
        {
            "name": f"{where}: sign-in round trip, hub's share p50",
            "value": round(p50, 2),
            "unit": "ms",
            "target": f"<= {TARGET_MS:g} ms",
            "ok": p50 <= TARGET_MS,
        },
        {"name": f"{where}: hub's share p99", "value": round(p99, 2), "unit": "ms"},
        {"name": f"{where}: hub CPU per sign-in (mean)", "value": round(cpu, 2), "unit": "ms"},
        {
            "name": f"{where}: two plain hub requests by a fresh browser p50 (same rounds)",
            "value": round(plain, 2),
            "unit": "ms",
            "reference": True,
        },
        {
            "name": f"{where}: hub CPU for the two plain requests (mean, same rounds)",
            "value": round(plain_cpu, 2),
            "unit": "ms",
            "reference": True,
        },
        {"name": f"{where}: hub's share / two plain requests", "value": round(p50 / plain, 2), "unit": "x"},
        {
            "name": f"{where}: sign-ins that asked userinfo",
            "value": round(100 * statistics.fmean(r["userinfo"] for r in rounds)),
            "unit": "%",
        },
        {
            "name": f"{where}: /auth/oidc/login p50",
            "value": round(statistics.median(r["start"] for r in rounds), 2),
            "unit": "ms",
        },
        {
            "name": f"{where}: /auth/oidc/callback p50 (provider's time included)",
            "value": round(statistics.median(r["callback"] for r in rounds), 2),
            "unit": "ms",
        },
        {
            "name": f"{where}: the provider's token + userinfo time p50",
            "value": round(statistics.median(r["provider"] for r in rounds), 2),
            "unit": "ms",
            "reference": True,
        },
    ]


def main() -> None:
    """Parse arguments, run, print the BENCH_RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--userinfo", action="store_true", help="the provider keeps the groups out of the ID token")
    parser.add_argument("--quick", action="store_true", help="a few rounds only (CI: proves the bench runs)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup = 10, 2
    rows = run(args)
    print(table([{"bench": "sso", "rows": rows}]))
    print("BENCH_RESULT " + json.dumps({"bench": "sso", "rows": rows}))


if __name__ == "__main__":
    main()
