"""The relay's WebSocket leg: an ASGI WebSocket (the browser) joined to the IDE over an anyio TCP stream.

The IDE side speaks WebSocket through ``websockets``' sans-I/O ``ClientProtocol``: no hidden tasks, no
extra buffering, frames handed over as they are parsed. Why not httpx-ws: a relay over it does about a
third of the messages per second (``bench/relay.py --clients``), below configurable-http-proxy.

One anyio task group per connection: the browser-to-IDE pump runs as a child task, the IDE-to-browser pump
in the handler's own task; whichever side ends first ends the other. Close codes and reasons cross in both
directions (1005 "no status" stays without a status; a browser that vanished closes the IDE side with
1001; an IDE that vanished closes the browser side with 1014 "bad gateway"). Pings are answered on each
leg by its own protocol (uvicorn toward the browser, ``ClientProtocol`` toward the IDE).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio
from anyio.abc import SocketStream
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidState, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from app.streams.relay_stats import WorkspaceCounters

READ_SIZE = 65536
MAX_MESSAGE = 64 * 1024 * 1024
CLOSE_TIMEOUT = 3.0
IDE_GONE = 1014
SKIP_UPSTREAM = frozenset(
    {
        b"host",
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"content-length",
        b"transfer-encoding",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
        b"proxy-authorization",
    }
)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Denied(Exception):
    """The upgrade could not be relayed; ``status``/``body`` are what the browser is told."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


async def deny(scope: dict[str, Any], send: Send, status: int, body: str) -> None:
    """Refuse a WebSocket upgrade with an HTTP status (403 when the server lacks the denial extension)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        data = body.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": data})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": body[:120]})


class WebSocketRelay:
    """One relayed WebSocket: handshake with the IDE, then frames both ways until either side closes."""

    def __init__(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        counters: WorkspaceCounters,
        on_traffic: Callable[[], None],
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.counters = counters
        self.on_traffic = on_traffic
        self.proto: ClientProtocol | None = None
        self.stream: SocketStream | None = None
        self.client_closed = False
        self._pending: list[Any] = []
        self._sending = False

    async def run(self, key: tuple[str, int], target: str, headers: list[tuple[bytes, bytes]], host: bytes) -> None:
        """Relay until done; ``target`` is the IDE path with query, ``headers`` already cleaned of credentials."""
        message = await self.receive()
        if message["type"] != "websocket.connect":
            return
        try:
            response = await self._handshake(key, target, headers, host)
        except Denied as exc:
            self.counters.failed_upgrades += 1
            await deny(self.scope, self.send, exc.status, exc.body)
            await self._close_stream()
            return
        assert self.proto is not None
        self.counters.websockets_open += 1
        self.counters.websockets_total += 1
        try:
            accept: dict[str, Any] = {"type": "websocket.accept", "subprotocol": self.proto.subprotocol}
            cookies = [(b"set-cookie", v.encode("latin-1")) for v in response.headers.get_all("Set-Cookie")]
            if cookies:
                accept["headers"] = cookies
            await self.send(accept)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._browser_to_ide, tg.cancel_scope)
                await self._ide_to_browser()
                tg.cancel_scope.cancel()
        finally:
            self.counters.websockets_open -= 1
            await self._close_stream()

    async def _handshake(
        self, key: tuple[str, int], target: str, headers: list[tuple[bytes, bytes]], host: bytes
    ) -> Response:
        offered = [
            Subprotocol(p.strip())
            for name, value in self.scope["headers"]
            if name == b"sec-websocket-protocol"
            for p in value.decode("latin-1").split(",")
            if p.strip()
        ]
        try:
            with anyio.fail_after(10):
                self.stream = await anyio.connect_tcp(key[0], key[1])
        except (OSError, TimeoutError) as exc:
            raise Denied(502, f"the IDE is not answering ({exc.__class__.__name__})") from None
        host_text = key[0] if ":" not in key[0] else f"[{key[0]}]"
        proto = self.proto = ClientProtocol(
            parse_uri(f"ws://{host_text}:{key[1]}{target}"), subprotocols=offered or None, max_size=MAX_MESSAGE
        )
        request = proto.connect()
        del request.headers["Host"]
        request.headers["Host"] = host.decode("latin-1")
        for name, value in headers:
            if name not in SKIP_UPSTREAM:
                request.headers[name.decode("latin-1")] = value.decode("latin-1")
        proto.send_request(request)
        try:
            with anyio.fail_after(30):
                await self._flush()
                while True:
                    data = await self.stream.receive(READ_SIZE)
                    proto.receive_data(data)
                    for event in proto.events_received():
                        if isinstance(event, Response):
                            if proto.handshake_exc is not None:
                                raise Denied(event.status_code if event.status_code >= 400 else 502, _why(event))
                            self._pending = proto.events_received()
                            return event
        except TimeoutError:
            raise Denied(504, "the IDE did not complete the WebSocket handshake in time") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, InvalidHandshake):
            raise Denied(502, "the IDE closed the connection during the WebSocket handshake") from None

    async def _flush(self) -> None:
        """Write what the protocol queued. Both pumps call this; while one is writing, the other leaves its
        bytes to it (the writer loops until the queue is empty), so the stream never has two senders."""
        assert self.proto is not None and self.stream is not None
        if self._sending:
            return
        self._sending = True
        try:
            while out := self.proto.data_to_send():
                data = b"".join(out)
                if data:
                    await self.stream.send(data)
        finally:
            self._sending = False

    async def _browser_to_ide(self, scope: anyio.CancelScope) -> None:
        proto = self.proto
        assert proto is not None
        counters = self.counters
        try:
            while True:
                message = await self.receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if text is not None:
                        data = text.encode()
                        proto.send_text(data)
                    else:
                        data = message.get("bytes") or b""
                        proto.send_binary(data)
                    counters.bytes_up += len(data)
                    self.on_traffic()
                    await self._flush()
                elif kind == "websocket.disconnect":
                    self.client_closed = True
                    code = message.get("code", 1005)
                    if code == 1005 and "reason" not in message:
                        code = 1006  # uvicorn reports a dropped connection as 1005 without a reason
                    counters.closed("client", code)
                    await self._close_ide(code, message.get("reason") or "")
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, InvalidState):
            pass
        await anyio.sleep(CLOSE_TIMEOUT)  # the other pump ends first when the IDE answers the close
        scope.cancel()

    async def _close_ide(self, code: int, reason: str) -> None:
        """Pass the browser's close on, then give the IDE ``CLOSE_TIMEOUT`` seconds to answer it."""
        proto = self.proto
        assert proto is not None
        try:
            if code == 1005:
                proto.send_close()
            elif code == 1006:
                proto.send_close(1001, "the browser went away")
            else:
                try:
                    proto.send_close(code, reason)
                except ProtocolError:
                    proto.send_close(1000, reason)
            await self._flush()
        except (InvalidState, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return

    async def _ide_to_browser(self) -> None:
        proto = self.proto
        assert proto is not None and self.stream is not None
        counters = self.counters
        parts: list[bytes] = []
        opcode = Opcode.TEXT
        events: list[Any] = self._pending
        while True:
            for event in events:
                if not isinstance(event, Frame):
                    continue
                op = event.opcode
                if op is Opcode.TEXT or op is Opcode.BINARY:
                    opcode = op
                    if event.fin:
                        await self._to_browser(op, event.data)
                        continue
                    parts = [event.data]
                elif op is Opcode.CONT:
                    parts.append(event.data)
                    if event.fin:
                        await self._to_browser(opcode, b"".join(parts))
                        parts = []
                elif op is Opcode.CLOSE:
                    await self._ide_closed()
                    return
            await self._flush()  # pongs the protocol queued
            try:
                data = await self.stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                if not self.client_closed:
                    counters.closed("ide", 1006)
                    await self._close_browser(IDE_GONE, "the IDE connection was lost")
                return
            counters.bytes_down += len(data)
            proto.receive_data(data)
            events = proto.events_received()
            self.on_traffic()

    async def _to_browser(self, opcode: Opcode, data: bytes) -> None:
        if self.client_closed:
            return
        message = {"type": "websocket.send", "text": data.decode()} if opcode is Opcode.TEXT else None
        try:
            await self.send(message or {"type": "websocket.send", "bytes": data})
        except OSError:  # uvicorn's ClientDisconnected: the other pump gets the disconnect and closes the IDE
            self.client_closed = True

    async def _ide_closed(self) -> None:
        proto = self.proto
        assert proto is not None
        rcvd = proto.close_rcvd
        code = rcvd.code if rcvd is not None else 1005
        reason = rcvd.reason if rcvd is not None else ""
        if not self.client_closed:
            self.counters.closed("ide", code)
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._flush()  # the protocol's answer to the IDE's close
        if not self.client_closed:
            await self._close_browser(1000 if code in (1005, 1006) else code, reason)

    async def _close_browser(self, code: int, reason: str) -> None:
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except OSError:  # the browser is already gone (uvicorn raises ClientDisconnected)
            self.client_closed = True

    async def _close_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await anyio.aclose_forcefully(stream)


def _why(response: Response) -> str:
    body = bytes(response.body or b"")[:200].decode("utf-8", "replace").strip()
    return f"the IDE refused the WebSocket: {response.status_code} {response.reason_phrase} {body}".strip()
