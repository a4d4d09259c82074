"""Which upstream client should the relay use? Minimal relays, one per client, against the same upstream.

Each candidate is a bare ASGI relay (no auth, no rewriting) served by uvicorn with one worker, so only the
upstream client differs:

- HTTP (``wrk -t1 -c50``, 1 KiB answers): one shared ``httpx.AsyncClient``; one tuned
  ``aiohttp.ClientSession``; the relay's own ``relay_http`` pool (``Link`` + httptools).
- WebSocket (``bench/wsload.py``, 50 connections ping-pong): ``httpx-ws``; the ``websockets`` asyncio client;
  the relay's own frame codec (``relay_ws`` over ``Link``); the spliced sockets (``SpliceProtocol``).

Reports req/s or messages/s and the relay process's CPU time per request or message (steadier than
throughput on a shared machine). Loopback only; every process is stopped at the end.

Usage: ``python bench/relay_clients.py [--seconds 6] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.relay import BENCH, PY, cpu_seconds, free_port, spawn, wait_http, wrk, ws_pingpong  # noqa: E402

HTTP_KINDS = ("httpx", "aiohttp", "relay_http")
WS_KINDS = ("httpx-ws", "websockets", "relay_ws-frames", "relay_ws-splice")
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer", b"host"}


def http_app(kind: str, upstream: str) -> Any:
    """A minimal HTTP relay over ``kind``."""
    import aiohttp
    import httpx

    from app.streams.net.pool import UpstreamPool
    from app.streams.relay.http import Exchange

    state: dict[str, Any] = {}
    host, port = upstream.split(":")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP]
        path = scope["raw_path"]
        if kind == "httpx":
            if "c" not in state:
                state["c"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))
            client = state["c"]
            request = client.build_request("GET", f"http://{upstream}{path.decode()}", headers=headers)
            r = await client.send(request, stream=True)
            out = [(k, v) for k, v in r.headers.raw if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": r.status_code, "headers": out})
            async for chunk in r.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body"})
            await r.aclose()
        elif kind == "aiohttp":
            if "c" not in state:
                state["c"] = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=None),
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    timeout=aiohttp.ClientTimeout(total=None),
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                )
            hs = [(k.decode(), v.decode()) for k, v in headers]
            async with state["c"].get(f"http://{upstream}{path.decode()}", headers=hs, allow_redirects=False) as r:
                out = [(k, v) for k, v in r.raw_headers if k.lower() not in HOP]
                await send({"type": "http.response.start", "status": r.status, "headers": out})
                async for chunk in r.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body"})
        else:
            if "p" not in state:
                state["p"] = UpstreamPool()
            pool = state["p"]
            parts = [b"GET ", path, b" HTTP/1.1\r\nhost: ", upstream.encode(), b"\r\n"]
            for k, v in headers:
                parts += (k, b": ", v, b"\r\n")
            parts.append(b"\r\n")
            await Exchange(pool, (host, int(port)), "GET", b"".join(parts), "none").run(receive, send, lambda _s, h: h)

    return app


def ws_app(kind: str, upstream: str) -> Any:
    """A minimal WebSocket relay over ``kind``."""
    import anyio
    import httpx
    from httpx_ws import aconnect_ws
    from websockets.asyncio.client import connect

    from app.streams.relay.stats import WorkspaceCounters
    from app.streams.relay.ws import WebSocketRelay

    host, port = upstream.split(":")

    async def pump(receive: Any, send_up: Any, tg: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                tg.cancel_scope.cancel()
                return
            await send_up(message["text"] if message.get("text") is not None else message["bytes"])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "websocket":
            return
        if kind.startswith("relay_ws"):
            relay = WebSocketRelay(scope, receive, send, WorkspaceCounters(), lambda: None)
            await relay.run((host, int(port)), scope["path"], [], upstream.encode(), b"/w/x")
            return
        await receive()
        url = f"ws://{upstream}{scope['path']}"
        if kind == "websockets":
            async with connect(url, compression=None, max_size=None) as ws:
                await send({"type": "websocket.accept"})
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, receive, ws.send, tg)
                    async for msg in ws:
                        key = "text" if isinstance(msg, str) else "bytes"
                        await send({"type": "websocket.send", key: msg})
                    tg.cancel_scope.cancel()
        else:
            async with httpx.AsyncClient() as client, aconnect_ws(url, client) as ws:
                await send({"type": "websocket.accept"})

                async def send_up(data: str | bytes) -> None:
                    await (ws.send_text(data) if isinstance(data, str) else ws.send_bytes(data))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, receive, send_up, tg)
                    while True:
                        msg = await ws.receive()
                        data = getattr(msg, "data", None)
                        if data is None:
                            break
                        await send({"type": "websocket.send", "text" if isinstance(data, str) else "bytes": data})
                    tg.cancel_scope.cancel()

    return app


def serve(kind: str, upstream: str, port: int, ws: bool) -> None:
    """Run one candidate (in a child process)."""
    import uvicorn

    ws_impl: Any = "websockets-sansio"
    if kind == "relay_ws-splice":
        from app.streams.relay.splice import SpliceProtocol

        ws_impl = SpliceProtocol
    app = ws_app(kind, upstream) if ws else http_app(kind, upstream)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, ws=ws_impl)


def main() -> None:
    """Run every candidate and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "UPSTREAM", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, upstream, port = args.serve
        serve(kind, upstream, int(port), kind in WS_KINDS)
        return
    results: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="codehub-clients-") as tmpdir:
        tmp = Path(tmpdir)
        up_port = free_port()
        spawn(stack, [PY, str(BENCH / "upstream.py"), "--port", str(up_port)], tmp / "upstream.log")
        wait_http(f"http://127.0.0.1:{up_port}/")
        procs = {}
        for kind in HTTP_KINDS + WS_KINDS:
            port = free_port()
            argv = [PY, str(Path(__file__)), "--serve", kind, f"127.0.0.1:{up_port}", str(port)]
            procs[kind] = (spawn(stack, argv, tmp / f"{kind}.log", cwd=ROOT), port)
            wait_http(f"http://127.0.0.1:{port}/")
        for round_ in range(args.rounds):
            for kind in HTTP_KINDS:
                proc, port = procs[kind]
                before = cpu_seconds([proc.pid])
                run = wrk(f"http://127.0.0.1:{port}/x", args.seconds, {})
                run["cpu_us"] = round((cpu_seconds([proc.pid]) - before) / max(run["requests"], 1) * 1e6, 1)
                results.setdefault(kind, []).append(run)
                print(f"http {kind:>16} round {round_ + 1}: {run}", flush=True)
            for kind in WS_KINDS:
                proc, port = procs[kind]
                before = cpu_seconds([proc.pid])
                run = ws_pingpong(f"ws://127.0.0.1:{port}/x", args.seconds, {})
                handled = run["messages"] * (args.seconds + 1) / args.seconds
                run["cpu_us"] = round((cpu_seconds([proc.pid]) - before) / max(handled, 1) * 1e6, 1)
                results.setdefault(kind, []).append(run)
                print(f"ws   {kind:>16} round {round_ + 1}: {run}", flush=True)
                time.sleep(0.5)
    print(f"\n{'':18}{'per second':>12}{'p99 ms':>9}{'CPU us each':>13}")
    for kind, runs in results.items():
        rate = statistics.median(r.get("rps", r.get("msgs_per_s", 0)) for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        cpu = statistics.median(r["cpu_us"] for r in runs)
        print(f"{kind:18}{rate:>12.0f}{p99:>9.2f}{cpu:>13.1f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
