"""A tiny, fast upstream for the relay bench: HTTP 1 KiB answers (keep-alive) and a WebSocket echo, one port.

Raw asyncio protocol on uvloop: httptools parses HTTP, websockets' sans-I/O ``ServerProtocol`` speaks
WebSocket on connections whose request asks to upgrade. Fast enough that proxies, not this server,
are what a bench measures.

Usage: ``python bench/upstream.py --port PORT [--size 1024]``; prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import httptools
import uvloop
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol


class Upstream(asyncio.Protocol):
    """One connection: plain HTTP until (unless) a request asks to upgrade to WebSocket."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.ws: ServerProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.ws is None and b"ebsocket" in data and b"upgrade: websocket" in data.lower():
            # a proxy may send the upgrade on a keep-alive connection it used for plain requests before
            self.ws = ServerProtocol(max_size=None)
        if self.ws is not None:
            self.ws.receive_data(data)
            self._pump_ws()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.transport.write(self.response)  # type: ignore[union-attr]
        if not self.parser.should_keep_alive():
            self.transport.close()  # type: ignore[union-attr]

    def _pump_ws(self) -> None:
        ws = self.ws
        assert ws is not None
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
            elif ws.state is not State.OPEN:
                continue  # closing: frames that arrived with the close are not echoed
            elif event.opcode is Opcode.TEXT:
                ws.send_text(event.data)
            elif event.opcode is Opcode.BINARY:
                ws.send_binary(event.data)
        for chunk in ws.data_to_send():
            if chunk:
                self.transport.write(chunk)  # type: ignore[union-attr]
            else:
                self.transport.close()  # type: ignore[union-attr]
                return
        if ws.close_expected():
            self.transport.close()  # type: ignore[union-attr]


async def serve(port: int, size: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    body = b"x" * size
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: " + str(size).encode() + b"\r\n\r\n" + body
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(response), "127.0.0.1", port, backlog=4096)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    print("ready", flush=True)
    async with server:
        await stop


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.size))


if __name__ == "__main__":
    main()
