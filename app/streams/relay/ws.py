"""The relay's WebSocket leg: an ASGI WebSocket (the browser) joined to the IDE over a ``Link``.

Toward the IDE the relay is a WebSocket client of its own (``relay_wsframes``: handshake and frame codec,
no extensions). Why not httpx-ws or the ``websockets`` asyncio client: measured with
``bench/relay_clients.py`` (50 connections ping-pong), minimal relays do ~6,600 messages/s over httpx-ws
(156 µs of CPU each), ~17,500 over the ``websockets`` client (41 µs) and ~26,300 over this module (30 µs).
Under ``codehub serve`` this path is the fallback: ``relay_splice`` joins the sockets instead (16 µs).

One anyio task group per connection: the browser-to-IDE pump runs as a child task, the IDE-to-browser pump
in the handler's own task; whichever side ends first ends the other. Close codes and reasons cross in both
directions (1005 "no status" stays without a status; a browser that vanished closes the IDE side with
1001; an IDE that vanished closes the browser side with 1014 "bad gateway"). Pings are answered on each
leg (uvicorn toward the browser, this module toward the IDE).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httptools

from app.streams.net.io import Link, open_link
from app.streams.relay.access import rewrite_set_cookie
from app.streams.relay.splice import SPLICE
from app.streams.relay.stats import WorkspaceCounters
from app.streams.relay.wsframes import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameReader,
    HandshakeRefused,
    ProtocolViolation,
    check_handshake,
    close_frame,
    frame,
    handshake_request,
    parse_close,
)

MAX_MESSAGE = 64 * 1024 * 1024
CLOSE_TIMEOUT = 3.0
IDE_GONE = 1014
KEEP_FOR_SPLICE = (
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
)
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


class _Head:
    """httptools callbacks for the IDE's handshake answer."""

    __slots__ = ("headers", "headers_done")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True


async def _upgrade_exchange(link: Link, request: bytes, parser: Any, head: _Head) -> bytes | None:
    """Send a WebSocket handshake and read the answer's head: the bytes after it when the IDE upgraded,
    None when it answered without upgrading (``ConnectionResetError`` when it closed first)."""
    await link.send(request)
    while True:
        data = await link.read()
        if not data:
            raise ConnectionResetError
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return data[upgrade.args[0] :]
        if head.headers_done:
            return None


class WebSocketRelay:
    """One relayed WebSocket: handshake with the IDE, then frames both ways until either side closes."""

    def __init__(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        counters: WorkspaceCounters,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.counters = counters
        self.link: Link | None = None
        self.client_closed = False
        self.close_sent = False

    async def run(
        self, key: tuple[str, int], target: str, headers: list[tuple[bytes, bytes]], host: bytes, prefix: bytes
    ) -> None:
        """Relay until done; ``target`` is the IDE path with query, ``headers`` already cleaned of credentials."""
        message = await self.receive()
        if message["type"] != "websocket.connect":
            return
        if SPLICE in self.scope.get("extensions", {}):
            await self._run_spliced(key, target, headers, host, prefix)
            return
        try:
            subprotocol, cookies, leftover = await self._handshake(key, target, headers, host)
        except Denied as exc:
            self.counters.failed_upgrades += 1
            await deny(self.scope, self.send, exc.status, exc.body)
            self._close_link()
            return
        self.counters.websockets_open += 1
        self.counters.websockets_total += 1
        try:
            accept: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
            kept = [(b"set-cookie", c) for c in (rewrite_set_cookie(v, prefix) for v in cookies) if c is not None]
            if kept:
                accept["headers"] = kept
            await self.send(accept)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._browser_to_ide, tg.cancel_scope)
                await self._ide_to_browser(leftover)
                tg.cancel_scope.cancel()
        finally:
            self.counters.websockets_open -= 1
            self._close_link()

    async def _run_spliced(
        self, key: tuple[str, int], target: str, headers: list[tuple[bytes, bytes]], host: bytes, prefix: bytes
    ) -> None:
        """Handshake with the IDE for the browser, then let the server join the two sockets."""
        try:
            head, leftover = await self._splice_handshake(key, target, headers, host, prefix)
        except Denied as exc:
            self.counters.failed_upgrades += 1
            await deny(self.scope, self.send, exc.status, exc.body)
            self._close_link()
            return
        counters = self.counters
        counters.websockets_open += 1
        counters.websockets_total += 1
        try:
            splice = {"type": SPLICE, "link": self.link, "response": head, "leftover": leftover}
            await self.send({**splice, "counters": counters})
            while (await self.receive())["type"] != "websocket.disconnect":
                pass
            counters.closed("spliced", 0)  # frames are not parsed: the close code is the peers' business
        finally:
            counters.websockets_open -= 1
            self._close_link()

    async def _splice_handshake(
        self, key: tuple[str, int], target: str, headers: list[tuple[bytes, bytes]], host: bytes, prefix: bytes
    ) -> tuple[bytes, bytes]:
        """Send the browser's own handshake (key, extensions, subprotocols) to the IDE; returns the 101 head
        for the browser (cookies kept under the prefix) and any bytes that followed it."""
        try:
            link = self.link = await open_link(key[0], key[1], 10)
        except (OSError, TimeoutError) as exc:
            raise Denied(502, f"the IDE is not answering ({exc.__class__.__name__})") from None
        parts = [b"GET ", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ", host]
        parts.append(b"\r\nupgrade: websocket\r\nconnection: Upgrade\r\n")
        for name, value in self.scope["headers"]:
            if name in KEEP_FOR_SPLICE:
                parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            if name not in SKIP_UPSTREAM:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        head = _Head()
        parser = httptools.HttpResponseParser(head)
        try:
            with anyio.fail_after(30):
                leftover = await _upgrade_exchange(link, b"".join(parts), parser, head)
            if leftover is None:
                status = parser.get_status_code()
                raise Denied(status if status >= 400 else 502, f"the IDE refused the WebSocket ({status})")
        except TimeoutError:
            raise Denied(504, "the IDE did not complete the WebSocket handshake in time") from None
        except (OSError, httptools.HttpParserError):
            raise Denied(502, "the IDE closed the connection during the WebSocket handshake") from None
        if parser.get_status_code() != 101:
            raise Denied(502, "the IDE sent an invalid WebSocket handshake")
        out = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        for name, value in head.headers:
            if name == b"set-cookie":
                fixed = rewrite_set_cookie(value, prefix)
                if fixed is None:
                    continue
                value = fixed
            out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")
        return b"".join(out), leftover

    async def _handshake(
        self, key: tuple[str, int], target: str, headers: list[tuple[bytes, bytes]], host: bytes
    ) -> tuple[str | None, list[bytes], bytes]:
        offered = [
            p.strip()
            for name, value in self.scope["headers"]
            if name == b"sec-websocket-protocol"
            for p in value.decode("latin-1").split(",")
            if p.strip()
        ]
        try:
            link = self.link = await open_link(key[0], key[1], 10)
        except (OSError, TimeoutError) as exc:
            raise Denied(502, f"the IDE is not answering ({exc.__class__.__name__})") from None
        request, ws_key = handshake_request(
            target, host, [(n, v) for n, v in headers if n not in SKIP_UPSTREAM], offered
        )
        head = _Head()
        parser = httptools.HttpResponseParser(head)
        try:
            with anyio.fail_after(30):
                leftover = await _upgrade_exchange(link, request, parser, head) or b""
            subprotocol = check_handshake(parser.get_status_code(), head.headers, ws_key, offered)
        except TimeoutError:
            raise Denied(504, "the IDE did not complete the WebSocket handshake in time") from None
        except HandshakeRefused as exc:
            raise Denied(exc.status if exc.status >= 400 else 502, exc.detail) from None
        except (OSError, httptools.HttpParserError):
            raise Denied(502, "the IDE closed the connection during the WebSocket handshake") from None
        cookies = [value for name, value in head.headers if name == b"set-cookie"]
        return subprotocol, cookies, leftover

    async def _browser_to_ide(self, scope: anyio.CancelScope) -> None:
        link = self.link
        assert link is not None
        counters = self.counters
        receive = self.receive
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    if text is not None:
                        payload = text.encode()
                        data = frame(TEXT, payload)
                    else:
                        payload = message.get("bytes") or b""
                        data = frame(BINARY, payload)
                    counters.bytes_up += len(payload)
                    await link.send(data)
                elif kind == "websocket.disconnect":
                    self.client_closed = True
                    code = message.get("code", 1005)
                    if code == 1005 and "reason" not in message:
                        code = 1006  # uvicorn reports a dropped connection as 1005 without a reason
                    counters.closed("client", code)
                    self._close_ide(code, message.get("reason") or "")
                    break
        except OSError:
            pass
        await anyio.sleep(CLOSE_TIMEOUT)  # the other pump ends first when the IDE answers the close
        scope.cancel()

    def _close_ide(self, code: int, reason: str) -> None:
        """Pass the browser's close on; the IDE then has ``CLOSE_TIMEOUT`` seconds to answer it."""
        if self.close_sent or self.link is None:
            return
        self.close_sent = True
        if code == 1005:
            self.link.write_now(close_frame(None))
        elif code == 1006:
            self.link.write_now(close_frame(1001, "the browser went away"))
        elif (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code < 5000:
            self.link.write_now(close_frame(code, reason))
        else:
            self.link.write_now(close_frame(1000, reason))

    async def _ide_to_browser(self, data: bytes) -> None:
        link = self.link
        assert link is not None
        counters = self.counters
        reader = FrameReader(MAX_MESSAGE)
        while True:
            if data:
                counters.bytes_down += len(data)
                try:
                    if await self._deliver(reader.feed(data)):
                        return
                except ProtocolViolation as exc:
                    counters.closed("hub", exc.code)
                    self._close_ide(exc.code, exc.reason)
                    await self._close_browser(IDE_GONE, "the IDE broke the WebSocket protocol")
                    return
            try:
                data = await link.read()
            except OSError:
                data = b""
            if not data:
                if not self.client_closed:
                    counters.closed("ide", 1006)
                    await self._close_browser(IDE_GONE, "the IDE connection was lost")
                return

    async def _deliver(self, messages: list[tuple[int, bytes]]) -> bool:
        """Pass messages to the browser and answer control frames; True once the IDE closed."""
        for opcode, payload in messages:
            if opcode == TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    raise ProtocolViolation(1007, "invalid UTF-8 in a text message") from None
                if not self.client_closed:
                    await self._to_browser({"type": "websocket.send", "text": text})
            elif opcode == BINARY:
                if not self.client_closed:
                    await self._to_browser({"type": "websocket.send", "bytes": payload})
            elif opcode == PING:
                assert self.link is not None
                self.link.write_now(frame(PONG, payload))
            elif opcode == CLOSE:
                code, reason = parse_close(payload)
                if not self.client_closed:
                    self.counters.closed("ide", code)
                if not self.close_sent:  # answer the IDE's close with the same code
                    self._close_ide(1005 if code == 1005 else code, reason)
                if not self.client_closed:
                    await self._close_browser(1000 if code == 1005 else code, reason)
                return True
        return False

    async def _to_browser(self, message: dict[str, Any]) -> None:
        try:
            await self.send(message)
        except OSError:  # uvicorn's ClientDisconnected: the other pump gets the disconnect and closes the IDE
            self.client_closed = True

    async def _close_browser(self, code: int, reason: str) -> None:
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except OSError:  # the browser is already gone (uvicorn raises ClientDisconnected)
            self.client_closed = True

    def _close_link(self) -> None:
        if self.link is not None:
            self.link.abort()
