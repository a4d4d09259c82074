"""The relay's upstream HTTP/1.1 leg: a keep-alive pool on anyio TCP streams, responses parsed by httptools.

Why not httpx or aiohttp here: measured with ``bench/relay.py --clients`` (1 KiB answers, 50 concurrent,
one uvicorn worker), a minimal relay over one shared ``httpx.AsyncClient`` does ~400 req/s (its pool under
concurrency, encode/httpx#3215), over a tuned ``aiohttp.ClientSession`` ~6,500 — both below
configurable-http-proxy on this machine — while this module's ~150 lines do ~13,000. A relay needs no
cookies, redirects, decompression or proxies from its client, only framing, which httptools (already
installed with ``uvicorn[standard]``) does in C.

Bodies stream both ways: a request body is written as the client sends it (a ``content-length`` is kept,
otherwise it is re-chunked), the response is passed on chunk by chunk as it is read, so memory per request
stays at one read buffer. A pooled connection that turns out dead before any response byte is retried once
on a new connection (requests without a body only).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httptools
from anyio.abc import SocketStream

READ_SIZE = 65536
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
FixHeaders = Callable[[int, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]


class UpstreamError(Exception):
    """The IDE could not be reached or answered garbage before a response started (the relay answers 502)."""

    def __init__(self, detail: str, *, timeout: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timeout = timeout


class UpstreamBroken(Exception):
    """The IDE went away in the middle of a response: the client connection must be aborted, not completed."""


class ClientGone(Exception):
    """The client disconnected while its request body was being relayed."""


class _Parsed:
    """httptools callbacks collecting one response."""

    __slots__ = ("chunks", "done", "headers", "headers_done")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Conn:
    """One upstream TCP connection."""

    __slots__ = ("idle_since", "key", "stream")

    def __init__(self, key: tuple[str, int], stream: SocketStream) -> None:
        self.key = key
        self.stream = stream
        self.idle_since = 0.0


class UpstreamPool:
    """Idle keep-alive connections per ``(host, port)``, newest first; expired ones are closed on the way.

    ``idle_ttl`` stays below the IDE's own keep-alive timeout (Node's default is 5 s) so a reused
    connection is rarely one the other side is closing.
    """

    def __init__(
        self,
        *,
        max_idle_per_host: int = 64,
        idle_ttl: float = 4.0,
        connect_timeout: float = 5.0,
        header_timeout: float = 300.0,
    ) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.idle_ttl = idle_ttl
        self.connect_timeout = connect_timeout
        self.header_timeout = header_timeout
        self._idle: dict[tuple[str, int], deque[Conn]] = {}
        self.opened = 0
        self.reused = 0
        self.open_now = 0

    async def connect(self, key: tuple[str, int]) -> Conn:
        """A new connection (``UpstreamError`` when refused, unreachable or too slow)."""
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await anyio.connect_tcp(key[0], key[1])
        except TimeoutError:
            raise UpstreamError(f"connecting to {key[0]}:{key[1]} timed out", timeout=True) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from None
        self.opened += 1
        self.open_now += 1
        return Conn(key, stream)

    async def take(self, key: tuple[str, int]) -> Conn | None:
        """An idle connection to ``key`` that is young enough, or None."""
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = time.monotonic() - self.idle_ttl
        while idle:
            conn = idle.pop()
            if conn.idle_since >= limit:
                self.reused += 1
                return conn
            await self.discard(conn)
        return None

    async def give_back(self, conn: Conn) -> None:
        """Keep ``conn`` for reuse (or close the oldest when the host already has enough idle ones)."""
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle_per_host:
            await self.discard(idle.popleft())
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def discard(self, conn: Conn) -> None:
        """Close ``conn`` at once (it returns immediately, even in a cancelled scope)."""
        self.open_now -= 1
        await anyio.aclose_forcefully(conn.stream)

    async def drop_host(self, key: tuple[str, int]) -> None:
        """Close every idle connection to ``key`` (its IDE stopped or moved)."""
        for conn in self._idle.pop(key, ()):
            await self.discard(conn)

    async def aclose(self) -> None:
        """Close every idle connection."""
        for key in list(self._idle):
            await self.drop_host(key)

    def stats(self) -> dict[str, int]:
        """Connection counters."""
        return {
            "upstream_opened": self.opened,
            "upstream_reused": self.reused,
            "upstream_open": self.open_now,
            "upstream_idle": sum(len(q) for q in self._idle.values()),
        }


def request_body_kind(headers: list[tuple[bytes, bytes]]) -> str:
    """``none``, ``length`` or ``chunked``: how the client's request body is framed."""
    kind = "none"
    for name, value in headers:
        if name == b"content-length":
            return "length" if value.strip() != b"0" else "none"
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            kind = "chunked"
    return kind


class Exchange:
    """One request/response over the pool.

    ``run`` returns the status it relayed. It raises ``UpstreamError`` before anything reached the client
    (the caller answers 502/504), ``UpstreamBroken`` when the IDE failed mid-response (the caller must abort
    the client connection) and ``ClientGone`` when the client left first.
    """

    __slots__ = ("body_kind", "bytes_down", "bytes_up", "client_gone", "head", "key", "method", "pool")

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], method: str, head: bytes, body_kind: str) -> None:
        self.pool = pool
        self.key = key
        self.method = method
        self.head = head
        self.body_kind = body_kind
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_gone = False

    async def run(self, receive: Receive, send: Send, fix_headers: FixHeaders) -> int:
        """Send the request, relay the response; ``fix_headers(status, headers)`` shapes response headers."""
        conn, parsed, parser = await self._request_and_headers(receive)
        try:
            return await self._respond(conn, parsed, parser, receive, send, fix_headers)
        except BaseException:
            await self.pool.discard(conn)
            raise

    async def _request_and_headers(self, receive: Receive) -> tuple[Conn, _Parsed, Any]:
        for attempt in (0, 1):
            conn = await self.pool.take(self.key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self.pool.connect(self.key)
            try:
                if self.body_kind == "none":
                    await conn.stream.send(self.head)
                    parsed, parser = await self._read_headers(conn)
                else:
                    parsed, parser = await self._with_body(conn, receive)
                return conn, parsed, parser
            except _IO_ERRORS as exc:
                await self.pool.discard(conn)
                if reused and self.body_kind == "none" and self.bytes_down == 0:
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise UpstreamError(f"the IDE closed the connection ({type(exc).__name__})") from None
            except httptools.HttpParserError as exc:
                await self.pool.discard(conn)
                raise UpstreamError(f"the IDE sent a malformed response: {exc}") from None
            except BaseException:
                await self.pool.discard(conn)
                raise
        raise AssertionError("unreachable")

    async def _read_headers(self, conn: Conn) -> tuple[_Parsed, Any]:
        parsed = _Parsed()
        parser = httptools.HttpResponseParser(parsed)
        try:
            with anyio.fail_after(self.pool.header_timeout):
                while True:
                    while not parsed.headers_done:
                        data = await conn.stream.receive(READ_SIZE)
                        self.bytes_down += len(data)
                        parser.feed_data(data)
                    status = parser.get_status_code()
                    if status < 100 or status >= 200 or status == 101:
                        return parsed, parser
                    # an interim answer (103 Early Hints): skip it, the real response follows
                    rest = b"".join(parsed.chunks)
                    parsed = _Parsed()
                    parser = httptools.HttpResponseParser(parsed)
                    if rest:
                        parser.feed_data(rest)
        except TimeoutError:
            raise UpstreamError("the IDE did not answer in time", timeout=True) from None

    async def _with_body(self, conn: Conn, receive: Receive) -> tuple[_Parsed, Any]:
        """Stream the request body while waiting for the response head (the IDE may answer early)."""
        result: list[tuple[_Parsed, Any]] = []

        async def read_head() -> None:
            result.append(await self._read_headers(conn))

        with _flat_errors():
            async with anyio.create_task_group() as tg:
                await conn.stream.send(self.head)
                tg.start_soon(read_head)
                await self._send_body(conn, receive)
        return result[0]

    async def _send_body(self, conn: Conn, receive: Receive) -> None:
        chunked = self.body_kind == "chunked"
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise ClientGone
            body = message.get("body", b"")
            if body:
                self.bytes_up += len(body)
                await conn.stream.send(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
            if not message.get("more_body", False):
                break
        if chunked:
            await conn.stream.send(b"0\r\n\r\n")

    async def _respond(
        self, conn: Conn, parsed: _Parsed, parser: Any, receive: Receive, send: Send, fix_headers: FixHeaders
    ) -> int:
        status = parser.get_status_code()
        framed = any(
            name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower())
            for name, value in parsed.headers
        )
        if self.method == "HEAD" or status in (204, 304):
            parsed.done = True
            parsed.chunks.clear()
        await send({"type": "http.response.start", "status": status, "headers": fix_headers(status, parsed.headers)})
        if parsed.done:
            await send({"type": "http.response.body", "body": b"".join(parsed.chunks)})
            await self._finish(conn, parser, framed)
            return status
        with _flat_errors():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                await self._stream_body(conn, parsed, parser, send, framed)
                tg.cancel_scope.cancel()
        if self.client_gone:
            raise ClientGone
        await self._finish(conn, parser, framed)
        return status

    async def _stream_body(self, conn: Conn, parsed: _Parsed, parser: Any, send: Send, framed: bool) -> None:
        while True:
            if parsed.chunks:
                body = b"".join(parsed.chunks) if len(parsed.chunks) > 1 else parsed.chunks[0]
                parsed.chunks.clear()
                await send({"type": "http.response.body", "body": body, "more_body": not parsed.done})
                if parsed.done:
                    return
            elif parsed.done:
                await send({"type": "http.response.body", "body": b""})
                return
            try:
                data = await conn.stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                if framed:
                    raise UpstreamBroken("the IDE closed the connection in the middle of a response") from None
                parsed.done = True  # a response delimited by the connection closing
                continue
            except _IO_ERRORS as exc:
                raise UpstreamBroken(f"the IDE connection broke in the middle of a response ({exc!r})") from None
            self.bytes_down += len(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise UpstreamBroken(f"the IDE sent a malformed body: {exc}") from None

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        """Stop relaying when the client goes away (uvicorn's ``send`` silently drops data after that)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                scope.cancel()
                return

    async def _finish(self, conn: Conn, parser: Any, framed: bool) -> None:
        if framed and parser.should_keep_alive():
            await self.pool.give_back(conn)
        else:
            await self.pool.discard(conn)


@contextmanager
def _flat_errors() -> Iterator[None]:
    """Re-raise the first real error of a task group instead of an ``ExceptionGroup`` around it."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
