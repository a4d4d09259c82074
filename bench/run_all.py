"""Run every benchmark in bench/ and print one table (``just bench``).

Discovers ``bench/<name>.py`` for the known benches (api, fanout, runtime, patches, relay, ai, dashboard) and any other
script in bench/ that prints a ``BENCH_RESULT`` line (files starting with ``_``, helpers like
``upstream.py`` and this file are skipped). Each runs as a subprocess with a timeout; its last
``BENCH_RESULT {json}`` line (protocol: bench/README.md) becomes rows of the table. A script that prints
no such line still appears, with its exit status and the tail of its output.

Usage: ``uv run python bench/run_all.py [--quick] [--only api,patches] [--timeout 900] [--json results.json]
[-- extra args passed to every bench]``.

``--quick`` runs every bench small (``QUICK``: short durations, few rounds, one configuration, no optional
references; a bench not listed there gets ``--quick`` when its source mentions that flag, else it is
skipped), ``QUICK_JOBS`` benches at a time (``--jobs``), in under three minutes, so CI can check that every
bench still runs. Its figures are printed but not judged (benches running side by side disturb each other's
figures): the exit status says only whether each bench ran. A full run goes one bench at a time.

Stopped by SIGTERM or SIGINT (a CI timeout), it stops the benches it started, with their process groups.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
KNOWN = ("api", "fanout", "runtime", "patches", "relay", "ai", "dashboard")
PREFIX = "BENCH_RESULT "
SKIP = {"run_all"}
QUICK_JOBS = 4
LONGEST_FIRST = ("cluster", "relay", "api", "runtime", "dashboard")  # quick forms measured slowest: start them first
QUICK: dict[str, list[str]] = {
    "api": ["--duration", "1", "--db", "postgres+redis"],
    "fanout": ["--subscribers", "200", "--duration", "2", "--drain", "2", "--no-ceiling"],
    "runtime": ["--pairs", "1", "--concurrent", "3"],
    "patches": [],
    "relay": ["--seconds", "1", "--rounds", "1", "--idle", "20", "--no-chp"],
    "ai": ["--requests", "10", "--streams", "5", "--tokens", "50", "--repeat", "1", "--long-tokens", "100"],
    "networks": ["--count", "10"],
    "dashboard": ["--quick"],
}


def quick_args(name: str) -> list[str] | None:
    """The arguments that make bench ``name`` small, or None when it has no quick form."""
    if name in QUICK:
        return QUICK[name]
    return ["--quick"] if '"--quick"' in (BENCH_DIR / f"{name}.py").read_text(errors="replace") else None


def discover() -> list[str]:
    """Bench names in run order: the known ones that exist, then other scripts speaking the protocol."""
    names = [name for name in KNOWN if (BENCH_DIR / f"{name}.py").is_file()]
    for path in sorted(BENCH_DIR.glob("*.py")):
        name = path.stem
        if name in names or name in SKIP or name.startswith("_"):
            continue
        if PREFIX.strip() in path.read_text(errors="replace"):
            names.append(name)
    return names


def parse_result(output: str) -> dict[str, Any] | None:
    """The last well-formed ``BENCH_RESULT`` object in ``output``, or None."""
    for line in reversed(output.splitlines()):
        if line.startswith(PREFIX):
            try:
                result = json.loads(line[len(PREFIX) :])
            except json.JSONDecodeError:
                continue
            if isinstance(result, dict) and isinstance(result.get("rows"), list):
                return result
    return None


_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()


def stop_running(signum: int, _frame: Any) -> None:
    """Signal handler: end every bench still running (its whole process group), then exit."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def run_one(name: str, timeout: float, extra: list[str], tag: str = "") -> dict[str, Any]:
    """Run ``bench/<name>.py``; returns its result (or a failure record) with the elapsed time. Its progress
    lines are printed as they come, each after ``tag`` (the bench's name when several run at once)."""
    started = time.monotonic()
    cmd = [sys.executable, str(BENCH_DIR / f"{name}.py"), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    print(f"--- {name}: {' '.join(cmd[1:])}", flush=True)
    lines: list[str] = []
    timed_out = threading.Event()

    def kill(proc: subprocess.Popen[str]) -> None:
        timed_out.set()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    try:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    except OSError as exc:
        return {"bench": name, "rows": [], "status": f"could not start: {exc}", "seconds": 0.0, "tail": []}
    with _running_lock:
        _running.add(proc)
    watchdog = threading.Timer(timeout, kill, args=(proc,))
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # stream progress so a long run is visibly alive
            lines.append(line.rstrip("\n"))
            if not line.startswith(PREFIX):
                print(f"    {tag}{line.rstrip()}", flush=True)
        proc.wait()
    finally:
        watchdog.cancel()
        with _running_lock:
            _running.discard(proc)
    if timed_out.is_set():
        status = f"timeout after {timeout:.0f} s"
    else:
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    output = "\n".join(lines)
    result = parse_result(output) or {"bench": name, "rows": []}
    result.update(bench=name, status=status, seconds=round(time.monotonic() - started, 1))
    print(f"--- {name}: {status} in {result['seconds']:.0f} s", flush=True)
    if not result["rows"]:
        result["tail"] = lines[-15:]
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(results: list[dict[str, Any]]) -> str:
    """One plain-text table of every row of every bench (references marked ``ref``)."""
    header = ("bench", "measurement", "value", "unit", "target", "")
    body: list[tuple[str, ...]] = []
    for result in results:
        if not result["rows"]:
            body.append((result["bench"], f"(no BENCH_RESULT line: {result['status']})", "", "", "", "?"))
            continue
        for row in result["rows"]:
            mark = {True: "ok", False: "MISSED", None: ""}.get(row.get("ok"), "")
            if row.get("reference"):
                mark = "ref"
            body.append(
                (
                    result["bench"],
                    str(row.get("name", "")),
                    _fmt(row.get("value")),
                    str(row.get("unit", "")),
                    str(row.get("target", "") or ""),
                    mark,
                )
            )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i != 2 else cell.rjust(widths[i]) for i, cell in enumerate(r))
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every bench/ script and print one table.")
    parser.add_argument("--only", help="comma-separated bench names (default: all discovered)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per bench (default 1200)")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--quick", action="store_true", help="every bench small, figures not judged (CI)")
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"benches at once (default {QUICK_JOBS} with --quick, else 1: figures need a quiet machine)",
    )
    parser.add_argument("extra", nargs="*", help="after --: arguments passed to every bench")
    args = parser.parse_args()
    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in names]
        if missing:
            print(f"unknown bench(es): {', '.join(missing)}; found: {', '.join(names)}", file=sys.stderr)
            return 2
        names = wanted
    print(f"benches: {', '.join(names)}", flush=True)
    signal.signal(signal.SIGTERM, stop_running)
    signal.signal(signal.SIGINT, stop_running)
    planned: list[tuple[str, list[str]]] = []
    for name in names:
        quick = quick_args(name) if args.quick else []
        if quick is None:
            print(f"--- {name}: skipped (no quick form)", flush=True)
            continue
        planned.append((name, [*quick, *args.extra]))
    jobs = max(1, args.jobs or (QUICK_JOBS if args.quick else 1))
    started = time.monotonic()
    if jobs == 1:
        results = [run_one(name, args.timeout, extra) for name, extra in planned]
    else:
        first = [item for name in LONGEST_FIRST for item in planned if item[0] == name]
        ordered = first + [item for item in planned if item not in first]
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = {name: pool.submit(run_one, name, args.timeout, extra, f"[{name}] ") for name, extra in ordered}
            results = [futures[name].result() for name, _ in planned]
    print()
    print(table(results))
    if args.quick:
        print("\n(--quick: small runs; the figures above are not judged)")
    for result in results:
        if result.get("tail"):
            print(f"\n{result['bench']} ({result['status']}), last lines:")
            print("\n".join(f"  {line}" for line in result["tail"]))
    print("\n" + ", ".join(f"{r['bench']} {r['status']} in {r['seconds']:.0f} s" for r in results))
    print(f"all in {time.monotonic() - started:.0f} s, {jobs} at a time")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
