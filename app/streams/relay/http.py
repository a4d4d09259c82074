"""The relay's upstream HTTP/1.1 leg: a keep-alive pool of ``Link`` connections, responses parsed by httptools.

Why not httpx or aiohttp here: measured with ``bench/relay_clients.py`` (1 KiB answers, 50 concurrent,
one uvicorn worker, 2 shared cores), a minimal relay over one shared ``httpx.AsyncClient`` does ~470 req/s
(p99 0.55 s; its pool under concurrency, encode/httpx#3215), one over a tuned ``aiohttp.ClientSession``
~6,700 req/s at 106 µs of CPU per request, and one over this module ~10,900 at 56 µs. A relay needs no
cookies, redirects, decompression or proxies from its client, only framing, which httptools (installed
with ``uvicorn[standard]``) does in C.

Bodies stream both ways: a request body is written as the client sends it (a ``content-length`` is kept,
otherwise it is re-chunked), the response is passed on chunk by chunk as it is read, so memory per request
stays at one read buffer. A pooled connection that turns out dead before any response byte is retried once
on a new connection (requests without a body only). Requests the IDE leaves unanswered for
``header_timeout`` are aborted by one sweep a second (``UpstreamPool.expire``), not a timer each.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import anyio
import httptools

from app.streams.net.pool import (
    IO_ERRORS,
    ClientGone,
    Conn,
    ParsedResponse,
    UpstreamBroken,
    UpstreamError,
    UpstreamPool,
)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
FixHeaders = Callable[[int, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]


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

    __slots__ = (
        "body_kind",
        "body_sent",
        "bytes_down",
        "bytes_up",
        "client_gone",
        "corked",
        "head",
        "key",
        "method",
        "pool",
        "timed_out",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        key: tuple[str, int],
        method: str,
        head: bytes,
        body_kind: str,
        corked: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.pool = pool
        self.corked = corked  # writes a whole response to the client in one go (see ``DirectWriter.corked``)
        self.key = key
        self.method = method
        self.head = head
        self.body_kind = body_kind
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_gone = False
        self.timed_out = False
        self.body_sent = body_kind == "none"

    async def run(self, receive: Receive, send: Send, fix_headers: FixHeaders) -> int:
        """Send the request, relay the response; ``fix_headers(status, headers)`` shapes response headers."""
        conn, parsed, parser = await self._request_and_headers(receive)
        try:
            return await self._respond(conn, parsed, parser, receive, send, fix_headers)
        except BaseException:
            self.pool.discard(conn)
            raise

    async def _request_and_headers(self, receive: Receive) -> tuple[Conn, ParsedResponse, Any]:
        for attempt in (0, 1):
            conn = self.pool.take(self.key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self.pool.connect(self.key)
            try:
                if self.body_kind == "none":
                    await conn.link.send(self.head)
                    parsed, parser = await self._read_headers(conn)
                else:
                    parsed, parser = await self._with_body(conn, receive)
                return conn, parsed, parser
            except IO_ERRORS as exc:
                self.pool.discard(conn)
                if self.timed_out:
                    raise UpstreamError("the IDE did not answer in time", timeout=True) from None
                if reused and self.body_kind == "none" and self.bytes_down == 0:
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise UpstreamError(f"the IDE closed the connection ({type(exc).__name__})") from None
            except httptools.HttpParserError as exc:
                self.pool.discard(conn)
                raise UpstreamError(f"the IDE sent a malformed response: {exc}") from None
            except BaseException:
                self.pool.discard(conn)
                raise
        raise AssertionError("unreachable")

    async def _read_headers(self, conn: Conn) -> tuple[ParsedResponse, Any]:
        parsed, parser = ParsedResponse.new()
        waiting = self.pool.waiting
        waiting[self] = (time.monotonic() + self.pool.header_timeout, conn)
        try:
            while not parsed.headers_done:  # interim answers (103) are skipped by the parser's callbacks
                data = await conn.link.read()
                if not data:
                    raise ConnectionResetError("the IDE closed the connection before answering")
                self.bytes_down += len(data)
                parser.feed_data(data)
            return parsed, parser
        finally:
            del waiting[self]

    async def _with_body(self, conn: Conn, receive: Receive) -> tuple[ParsedResponse, Any]:
        """Stream the request body while waiting for the response head. An IDE that answers before it has
        read the whole body (413, 401...) stops the upload; that connection is then not reused."""
        result: list[tuple[ParsedResponse, Any]] = []

        async def read_head() -> None:
            result.append(await self._read_headers(conn))
            if not self.body_sent:
                tg.cancel_scope.cancel()

        with _flat_errors():
            async with anyio.create_task_group() as tg:
                await conn.link.send(self.head)
                tg.start_soon(read_head)
                await self._send_body(conn, receive)
                self.body_sent = True
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
                await conn.link.send(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
            if not message.get("more_body", False):
                break
        if chunked:
            await conn.link.send(b"0\r\n\r\n")

    async def _respond(
        self, conn: Conn, parsed: ParsedResponse, parser: Any, receive: Receive, send: Send, fix_headers: FixHeaders
    ) -> int:
        status: int = parser.get_status_code()
        framed = parsed.framed
        if self.method == "HEAD" or status in (204, 304):
            parsed.done = True
            parsed.chunks.clear()
        start = {"type": "http.response.start", "status": status, "headers": fix_headers(status, parsed.headers)}
        if parsed.done:
            with self.corked():
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(parsed.chunks)})
            self._finish(conn, parsed, framed)
            return status
        await send(start)
        with _flat_errors():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
                await self._stream_body(conn, parsed, parser, send, framed)
                tg.cancel_scope.cancel()
        if self.client_gone:
            raise ClientGone
        self._finish(conn, parsed, framed)
        return status

    async def _stream_body(self, conn: Conn, parsed: ParsedResponse, parser: Any, send: Send, framed: bool) -> None:
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
                data = await conn.link.read()
            except IO_ERRORS as exc:
                raise UpstreamBroken(f"the IDE connection broke in the middle of a response ({exc!r})") from None
            if not data:
                if framed:
                    raise UpstreamBroken("the IDE closed the connection in the middle of a response")
                parsed.done = True  # a response delimited by the connection closing
                continue
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

    def _finish(self, conn: Conn, parsed: ParsedResponse, framed: bool) -> None:
        if framed and parsed.keep_alive and self.body_sent:
            self.pool.give_back(conn)
        else:
            self.pool.discard(conn)


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
