"""A programmable IDE stand-in for relay tests (raw ASGI on uvicorn, run as its own process).

HTTP: ``/healthz`` → ok; ``/download?size=N[&chunked=1]`` streams N bytes; ``/upload`` hashes the body as it
arrives; ``/early`` answers 413 without reading the body; ``/slow?delay=S`` answers late;
``/trickle?parts=N&delay=S`` sends parts slowly; ``/crash?after=N`` promises 10 MB, sends N bytes and breaks
the connection; ``/redirect?to=X``; ``/cookie``; ``/status/N``;
``/stats`` (what this process saw: aborted downloads, WebSocket closes); anything else echoes the request
as JSON. WebSocket at any path: echo; ``close:CODE:REASON`` closes with that code; ``crash`` drops the TCP
connection; ``hello`` answers with the handshake it saw (headers, query, subprotocols).

Usage: ``python upstream_app.py --port PORT [dir]`` (``dir`` ignored: it doubles as a local IDE command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any
from urllib.parse import parse_qs

import anyio
import uvicorn

STATS: dict[str, Any] = {"aborted_downloads": 0, "ws_closes": [], "ws_open": 0}


def _query(scope: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}


async def _json(send: Any, data: Any, status: int = 200, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _watch(receive: Any, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    STATS["aborted_downloads"] += 1
    scope.cancel()


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path, q = scope["path"], _query(scope)
    if path == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/stats":
        await _json(send, STATS)
    elif path == "/upload":
        digest, size, chunks = hashlib.sha256(), 0, 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            digest.update(body)
            size += len(body)
            chunks += 1
            if not message.get("more_body"):
                break
        await _json(send, {"size": size, "sha256": digest.hexdigest(), "chunks": chunks})
    elif path == "/download":
        size = int(q.get("size", "0"))
        headers = [(b"content-type", b"application/octet-stream")]
        if not q.get("chunked"):
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        block = bytes(range(256)) * 256
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, receive, tg.cancel_scope)
            sent = 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                sent += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
                await anyio.sleep(0)
            tg.cancel_scope.cancel()
    elif path == "/early":
        await _json(send, {"error": "too big"}, status=413)
    elif path == "/slow":
        await anyio.sleep(float(q.get("delay", "1")))
        await _json(send, {"slow": True})
    elif path == "/trickle":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(int(q.get("parts", "5"))):
            await send({"type": "http.response.body", "body": f"part{i}\n".encode(), "more_body": True})
            await anyio.sleep(float(q.get("delay", "0.2")))
        await send({"type": "http.response.body", "body": b""})
    elif path == "/crash":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10485760")]})
        await send({"type": "http.response.body", "body": b"x" * int(q.get("after", "1000")), "more_body": True})
        await anyio.sleep(0.05)
        raise RuntimeError("upstream crash (on purpose)")
    elif path == "/redirect":
        await _json(send, {}, status=302, headers=[(b"location", q.get("to", "/").encode())])
    elif path == "/cookie":
        await _json(
            send,
            {},
            headers=[
                (b"set-cookie", b"a=1; Path=/; HttpOnly"),
                (b"set-cookie", b"b=2; Path=/static; Domain=example.com"),
                (b"set-cookie", b"c=3"),
                (b"set-cookie", b"codehub_session=evil; Path=/"),
            ],
        )
    elif path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-status", str(status).encode())]})
        await send({"type": "http.response.body", "body": b""})
    else:
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        await _json(
            send,
            {
                "method": scope["method"],
                "path": path,
                "raw_path": scope.get("raw_path", b"").decode(),
                "query": scope.get("query_string", b"").decode(),
                "headers": headers,
                "body_size": size,
            },
        )


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    STATS["ws_open"] += 1
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                STATS["ws_closes"].append(
                    {"path": scope["path"], "code": message.get("code"), "reason": message.get("reason", "")}
                )
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                _, code, reason = text.split(":", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                return
            if text == "crash":
                raise RuntimeError("websocket crash (on purpose)")
            if text == "hello":
                info = {
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode(),
                    "subprotocols": offered,
                    "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                }
                await send({"type": "websocket.send", "text": json.dumps(info)})
                continue
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
    finally:
        STATS["ws_open"] -= 1


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI entry point."""
    if scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)


def main() -> None:
    """Serve on 127.0.0.1:PORT until terminated."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("dir", nargs="?")
    args = parser.parse_args()
    print(f"upstream listening on {args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="critical", ws="websockets-sansio", lifespan="off")


if __name__ == "__main__":
    sys.exit(main())
