"""WebSocket load for the relay bench: ping-pong over N connections, or N idle connections held open.

Raw asyncio protocols with ``websockets``' sans-I/O client on uvloop, so the load generator is not what a
bench measures. Each connection sends a small text message, waits for its echo, and sends the next.

- ``python bench/wsload.py pingpong URL --conns 50 --seconds 8 [--header 'K: V']`` → one JSON line:
  ``{"messages": …, "msgs_per_s": …, "p50_ms": …, "p99_ms": …, "errors": …}``
- ``python bench/wsload.py idle URL --conns 1000 --hold 30`` → prints ``open <n>`` once every connection
  is up, then holds them until stdin closes or ``--hold`` seconds pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from urllib.parse import urlsplit

import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

PAYLOAD = "x" * 32


class Conn(asyncio.Protocol):
    """One WebSocket client connection."""

    def __init__(self, url: str, headers: list[tuple[str, str]], load: Load | None) -> None:
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.headers = headers
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = self.proto.connect()
        for name, value in self.headers:
            if name.lower() == "host":  # a virtual host (the hub's subdomain mode): replace, not add
                del request.headers["Host"]
            request.headers[name] = value
        self.proto.send_request(request)
        self.flush()

    def flush(self) -> None:
        """Write what the protocol has queued to the socket."""
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)  # type: ignore[union-attr]

    def send(self) -> None:
        """Send the next message of the ping-pong."""
        self.sent_at = time.perf_counter()
        self.proto.send_text(PAYLOAD.encode())
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if not self.ready.done():
                    self.ready.set_result(self.proto.handshake_exc is None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT and self.load is not None:
                self.load.done(self, time.perf_counter() - self.sent_at)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if self.load is not None:
            self.load.errors += 0 if self.load.stopping else 1


class Load:
    """Ping-pong bookkeeping: latencies inside the measured window."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.measuring = False
        self.stopping = False
        self.errors = 0

    def done(self, conn: Conn, latency: float) -> None:
        if self.measuring:
            self.latencies.append(latency)
        if not self.stopping:
            conn.send()


async def connect_all(url: str, count: int, headers: list[tuple[str, str]], load: Load | None) -> list[Conn]:
    """Open ``count`` connections (in batches, so the server's backlog is never the limit)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    for start in range(0, count, 100):
        batch = []
        for _ in range(min(100, count - start)):
            conn = Conn(url, headers, load)
            batch.append(conn)
            await loop.create_connection(lambda c=conn: c, parts.hostname, parts.port)
        results = await asyncio.wait_for(asyncio.gather(*(c.ready for c in batch)), 30)
        if not all(results):
            raise SystemExit(f"{results.count(False)} WebSocket handshakes failed")
        conns.extend(batch)
    return conns


async def close_all(conns: list[Conn]) -> None:
    """Close cleanly: a close frame each, a moment for the answers, then the sockets."""
    for conn in conns:
        if not conn.transport.is_closing():  # type: ignore[union-attr]
            conn.proto.send_close(1000)
            conn.flush()
    await asyncio.sleep(0.3)
    for conn in conns:
        conn.transport.close()  # type: ignore[union-attr]


async def pingpong(url: str, conns: int, seconds: float, headers: list[tuple[str, str]]) -> dict[str, float]:
    """Run the ping-pong: 1 s warm-up, then ``seconds`` measured."""
    load = Load()
    opened = await connect_all(url, conns, headers, load)
    for conn in opened:
        conn.send()
    await asyncio.sleep(1.0)
    load.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    elapsed = time.perf_counter() - started
    load.stopping = True
    await close_all(opened)
    lat = sorted(load.latencies)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: 0.0)
    return {
        "messages": len(lat),
        "msgs_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(pick(0.5), 3),
        "p99_ms": round(pick(0.99), 3),
        "errors": load.errors,
    }


async def idle(url: str, conns: int, hold: float, headers: list[tuple[str, str]]) -> None:
    """Open ``conns`` idle connections and hold them."""
    opened = await connect_all(url, conns, headers, None)
    print(f"open {len(opened)}", flush=True)
    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: closed.done() or (not sys.stdin.readline() and closed.set_result(1)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, hold)
    await close_all(opened)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pingpong", "idle"])
    parser.add_argument("url")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    headers = [tuple(h.split(": ", 1)) for h in args.header]
    if args.mode == "pingpong":
        print(json.dumps(uvloop.run(pingpong(args.url, args.conns, args.seconds, headers))), flush=True)
    else:
        uvloop.run(idle(args.url, args.conns, args.hold, headers))


if __name__ == "__main__":
    main()
