"""Bench-only hub servers for bench/fanout.py, to compare the HTTP layer of the real endpoint against:

- ``raw``: a raw ASGI app (no Litestar, no auth): the same hub and SSE framing, batched frames;
- ``litestar-sse``: Litestar's ``ServerSentEvent`` with one ``ServerSentEventMessage`` per event;
- ``app-profile``: the real app (``create_app``) under cProfile; the top functions go to a file at exit;
- ``app-diag``: the real app, recording event-loop lag and garbage-collector pauses (to a file at exit).

    python bench/fanout_server.py raw 8123      # settings from CODEHUB_* (Redis URL and prefix)
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from litestar import Litestar, get
from litestar.response import ServerSentEvent, ServerSentEventMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import Settings, load_settings
from app.streams.events.backend import open_hub
from app.streams.events.fanout import PING
from app.streams.events.sse import event_stream

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def raw_app(settings: Settings) -> Any:
    """A raw ASGI app: ``GET /ready`` and ``GET /events?topic=…`` (batched SSE frames)."""
    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            async with open_hub(settings) as hub:
                state["hub"] = hub
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] != "/events":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        topics = parse_qs(scope["query_string"].decode()).get("topic", [])
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        import anyio

        async with anyio.create_task_group() as tg:

            async def disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(disconnect)
            async for chunk in event_stream(state["hub"], topics, retry_ms=settings.sse_retry_ms):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tg.cancel_scope.cancel()

    return app


def litestar_sse_app(settings: Settings) -> Any:
    """Litestar with its own ``ServerSentEvent`` response, one message per event."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with open_hub(settings) as hub:
            state["hub"] = hub
            yield

    async def messages(topics: list[str]) -> AsyncIterator[ServerSentEventMessage]:
        async with state["hub"].subscribe(topics) as sub:
            while (batch := await sub.next_batch()) is not None:
                for item in batch:
                    if item is PING:
                        yield ServerSentEventMessage(comment="ping")
                    else:
                        yield ServerSentEventMessage(data=item.raw.decode(), event=item.type, id=str(item.seq))

    @get("/ready")
    async def ready() -> str:
        return "ok"

    @get("/events")
    async def events(topic: list[str]) -> ServerSentEvent:
        return ServerSentEvent(messages(topic), retry_duration=settings.sse_retry_ms)

    return Litestar([ready, events], lifespan=[lifespan], logging_config=None)


DIAG: dict[str, list[float]] = {"lag": [], "gc": []}


def diagnosed(inner: Any) -> Any:
    """Wrap an ASGI app: sample event-loop lag every 5 ms and time every garbage collection."""
    import gc

    started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            DIAG["gc"].append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(on_gc)

    async def lag_monitor() -> None:
        import anyio

        while True:
            before = time.perf_counter()
            await anyio.sleep(0.005)
            DIAG["lag"].append((time.perf_counter() - before - 0.005) * 1000)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await inner(scope, receive, send)
            return
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(lag_monitor)
            await inner(scope, receive, send)
            tg.cancel_scope.cancel()

    return app


def write_diag() -> None:
    lines = []
    for name, values in DIAG.items():
        values = sorted(values)
        if values:
            pick = [values[int(q * (len(values) - 1))] for q in (0.5, 0.9, 0.99, 1.0)]
            lines.append(
                f"{name}: n={len(values)} p50/p90/p99/max ms = "
                + " / ".join(f"{v:.1f}" for v in pick)
                + f"  total {sum(values):.0f} ms"
            )
    target = Path(tempfile.gettempdir()) / "codehub-fanout-diag.txt"
    target.write_text("\n".join(lines) + "\n")


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    settings = load_settings()
    profiler = None
    if kind.startswith("app"):
        from app.streams.events.hub import tune_gc_for_streaming

        tune_gc_for_streaming()  # as `codehub serve` does
    if kind == "raw":
        app = raw_app(settings)
    elif kind == "litestar-sse":
        app = litestar_sse_app(settings)
    elif kind == "app-profile":
        from app.factory import create_app

        app = create_app(settings)
        profiler = cProfile.Profile(time.process_time)  # CPU time: immune to other processes on the machine
        profiler.enable()
        # uvicorn re-raises SIGTERM after its graceful shutdown: exit through ``finally`` instead of dying.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    elif kind == "app-diag":
        import gc

        from app.factory import create_app

        if os.environ.get("BENCH_GC_THRESHOLD"):
            gc.set_threshold(*(int(v) for v in os.environ["BENCH_GC_THRESHOLD"].split(",")))

        app = diagnosed(create_app(settings))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    try:
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    finally:
        if kind == "app-diag":
            write_diag()
        if profiler is not None:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
            target = Path(tempfile.gettempdir()) / "codehub-fanout-profile.txt"
            target.write_text(out.getvalue())
            print(f"profile written to {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
