"""A stand-in for code-server in tests: HTTP (``/healthz`` → ``ok``, anything else → JSON echo of the
request) and a WebSocket echo on every path. Stdlib + ``websockets`` only.

Usage: ``python fake_ide.py --port PORT [DIR]``. Logs one line per request to stdout; exits on SIGTERM.
Environment knobs for tests: ``FAKE_IDE_DELAY`` (seconds before listening), ``FAKE_IDE_EXIT``
(exit with this code instead of listening).

Given the start's secret (``CODEHUB_IDE_SECRET``, as the local runtime passes it), it checks it as code-server
does with ``HASHED_PASSWORD``: every request but ``/healthz`` and every WebSocket upgrade needs the cookie
``code-server-session=<secret>`` (401 otherwise), and the echo leaves that cookie out, as code-server never
hands it back either.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import signal
import sys
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

SESSION_COOKIE = "code-server-session"
SECRET = os.environ.get("CODEHUB_IDE_SECRET", "")


def session_cookie(headers: Headers) -> str | None:
    """The first ``code-server-session`` value of the request's cookies (names trimmed, as code-server does)."""
    for value in headers.get_all("Cookie"):
        for part in value.split(";"):
            name, _, cookie = part.partition("=")
            if name.strip() == SESSION_COOKIE:
                return cookie.strip()
    return None


def without_session_cookie(headers: Headers) -> list[tuple[str, str]]:
    """The request's headers minus the IDE session cookie."""
    out = []
    for name, value in headers.raw_items():
        if name.lower() == "cookie":
            value = "; ".join(p.strip() for p in value.split(";") if p.partition("=")[0].strip() != SESSION_COOKIE)
            if not value:
                continue
        out.append((name, value))
    return out


def log(message: str) -> None:
    """One line to stdout, flushed (the hub reads it as IDE output)."""
    print(message, flush=True)


async def echo(connection: ServerConnection) -> None:
    """Echo text and binary frames until the client closes."""
    log(f"ws open {connection.request.path if connection.request else ''}")
    async for message in connection:
        await connection.send(message)
    log("ws closed")


def respond(connection: ServerConnection, request: Request) -> Response | None:
    """Answer plain HTTP requests; let WebSocket upgrades through (with the secret, when one is set)."""
    if request.path != "/healthz" and SECRET and not hmac.compare_digest(session_cookie(request.headers) or "", SECRET):
        log(f"refused {request.path}")
        body = b"Unauthorized"
        headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return Response(HTTPStatus.UNAUTHORIZED, "Unauthorized", headers, body)
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    log(f"GET {request.path}")
    if request.path == "/healthz":
        body = b"ok"
        content_type = "text/plain"
    else:
        body = json.dumps(
            {
                "method": "GET",
                "path": request.path,
                "headers": dict(without_session_cookie(request.headers)),
                "cwd": os.getcwd(),
            }
        ).encode()
        content_type = "application/json"
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(HTTPStatus.OK, "OK", headers, body)


async def main() -> int:
    """Parse arguments and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("dir", nargs="?", default=".")
    args = parser.parse_args()
    if os.environ.get("FAKE_IDE_EXIT"):
        log("fake-ide: exiting on request")
        return int(os.environ["FAKE_IDE_EXIT"])
    await asyncio.sleep(float(os.environ.get("FAKE_IDE_DELAY", "0")))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(echo, args.host, args.port, process_request=respond):
        log(f"fake-ide listening on {args.host}:{args.port} in {os.path.abspath(args.dir)}")
        await stop
    log("fake-ide: terminated")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
