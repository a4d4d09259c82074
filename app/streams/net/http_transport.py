"""An httpx transport on the relay's connection pool: streamed answers arrive one socket read at a time.

httpx's own transport (httpcore + h11) hands a streamed body over one HTTP chunk at a time, each through a
stack of async iterators and an ``anyio.fail_after`` scope. An OpenAI-compatible server sends every token
as its own chunk, so when tokens come fast the hub paid that stack once per token: measured with
``bench/ai.py`` (50 streams, tokens as fast as the fake goes), httpx's read path was about 45 % of the
hub's event-loop time. ``LinkTransport`` reads with ``relay_io.Link`` and parses with httptools, as the
relay does, and yields everything one read brought (several chunks, joined) at once; read timeouts are one
timer per timeout period (``_Watchdog``), not one cancel scope per read.

Only plain ``http://`` goes this way (the usual on-prem vLLM); anything else (``https://``) is handed to
the ``fallback`` transport. ``direct_http(url)`` tells whether a URL suits it: plain http and no proxy
from the environment (``HTTP_PROXY``/``ALL_PROXY`` without a matching ``NO_PROXY``), which this transport
does not speak; otherwise leave httpx its own transport.

Errors are httpx's own (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``,
``ReadError``, ``RemoteProtocolError``), so callers cannot tell the two transports apart. A kept-alive
connection that turns out closed before any byte of the answer is retried once on a new connection.
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

from app.streams.net.io import Link
from app.streams.net.pool import Conn, ParsedResponse, UpstreamError, UpstreamPool


class _Watchdog:
    """Aborts the connection when one read (or write) has waited ``timeout`` seconds."""

    __slots__ = ("conn", "fired", "handle", "loop", "phase", "since", "timeout", "waiting")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.timeout = math.inf
        self.since = 0.0
        self.waiting = False
        self.fired = False
        self.phase = "read"
        self.handle: asyncio.TimerHandle | None = None

    def start(self, timeout: float | None, phase: str = "read") -> None:
        """A wait begins that may last at most ``timeout`` seconds (None: forever)."""
        self.phase = phase
        self.timeout = math.inf if timeout is None else timeout
        self.since = self.loop.time()
        self.waiting = True
        if self.timeout == math.inf:
            return
        deadline = self.since + self.timeout
        if self.handle is not None and self.handle.when() > deadline:  # a shorter timeout than the armed one
            self.handle.cancel()
            self.handle = None
        if self.handle is None:
            self.handle = self.loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self.handle = None
        if not self.waiting:
            return
        deadline = self.since + self.timeout
        if self.loop.time() >= deadline:
            self.fired = True
            self.conn.link.abort()
        else:
            self.handle = self.loop.call_at(deadline, self._check)

    def stop(self) -> None:
        """Forget the timer (the exchange is over)."""
        self.waiting = False
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def _read(link: Link, watchdog: _Watchdog, within: float | None) -> bytes:
    """What the connection has received (waiting at most ``within`` seconds for something); ``b""`` at its end."""
    watchdog.start(within)
    data = await link.read()
    watchdog.waiting = False
    return data


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    return request.extensions.get("timeout") or {}


def _head(request: httpx.Request, body: bytes) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        lines.append(name + b": " + value)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:
        return head + (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head + body


def direct_http(url: str) -> bool:
    """True for an ``http://`` URL that no proxy from the environment applies to (``LinkTransport`` material)."""
    parsed = httpx.URL(url) if url else None
    if parsed is None or parsed.scheme != "http" or not parsed.host:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # undocumented, not in typeshed
    return bool(bypass(parsed.host, proxies))


class LinkTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` for ``http://`` on an ``UpstreamPool``; other schemes go to ``fallback``."""

    def __init__(self, *, fallback: httpx.AsyncBaseTransport | None = None, idle_ttl: float = 4.0) -> None:
        self.pool = UpstreamPool(idle_ttl=idle_ttl)
        self.fallback = fallback or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response once the head arrived; the body streams on iteration."""
        if request.url.scheme != "http":
            return await self.fallback.handle_async_request(request)
        key = (request.url.host, request.url.port or 80)
        timeouts = _timeouts(request)
        message = _head(request, await request.aread())
        for attempt in (0, 1):
            conn = self.pool.take(key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(request, key, timeouts.get("connect"))
            watchdog = _Watchdog(conn)
            try:
                parsed, parser = await self._exchange(request, conn, watchdog, message, timeouts)
            except _Stale:
                self.pool.discard(conn)
                watchdog.stop()
                if reused and attempt == 0:
                    continue
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from None
            except BaseException as exc:
                self.pool.discard(conn)
                watchdog.stop()
                raise _httpx_error(exc, watchdog, request) from None
            status = parser.get_status_code()
            if request.method == "HEAD" or status in (204, 304):
                parsed.done, parsed.keep_alive = True, False
                parsed.chunks.clear()
            body = _Body(self.pool, conn, parsed, parser, watchdog, request, timeouts.get("read"))
            return httpx.Response(
                status,
                headers=parsed.headers,
                stream=body,
                extensions={"http_version": b"HTTP/1.1"},
            )
        raise AssertionError("unreachable")

    async def _connect(self, request: httpx.Request, key: tuple[str, int], within: float | None) -> Conn:
        try:
            return await self.pool.connect(key, math.inf if within is None else within)
        except UpstreamError as exc:
            error = httpx.ConnectTimeout if exc.timeout else httpx.ConnectError
            raise error(exc.detail, request=request) from None

    async def _exchange(
        self,
        request: httpx.Request,
        conn: Conn,
        watchdog: _Watchdog,
        message: bytes,
        timeouts: dict[str, float | None],
    ) -> tuple[ParsedResponse, Any]:
        """Write the request, read up to the end of the (final) response head."""
        link, read_timeout = conn.link, timeouts.get("read")
        try:
            watchdog.start(timeouts.get("write"), "write")
            await link.send(message)
            data = await _read(link, watchdog, read_timeout)
        except OSError:
            if watchdog.fired:
                raise
            data = b""
        if not data:
            raise _Stale
        parsed, parser = ParsedResponse.new()
        parser.feed_data(data)
        while not parsed.headers_done:  # interim answers (103) are skipped by the parser's callbacks
            data = await _read(link, watchdog, read_timeout)
            if not data:
                raise httpx.RemoteProtocolError("the server closed the connection mid-head", request=request)
            parser.feed_data(data)
        return parsed, parser

    async def aclose(self) -> None:
        """Close idle connections and the fallback transport."""
        self.pool.close()
        await self.fallback.aclose()


class _Stale(Exception):
    """The connection closed before any byte of the answer: a kept-alive one the server had dropped."""


def _httpx_error(exc: BaseException, watchdog: _Watchdog, request: httpx.Request) -> BaseException:
    """``exc`` as the httpx error a caller of httpx expects (cancellation and httpx errors unchanged)."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    if watchdog.fired:
        error = httpx.WriteTimeout if watchdog.phase == "write" else httpx.ReadTimeout
        return error(f"nothing happened for {watchdog.timeout:g} s", request=request)
    if isinstance(exc, httptools.HttpParserError):
        return httpx.RemoteProtocolError(f"malformed response: {exc}", request=request)
    if isinstance(exc, OSError):
        return httpx.ReadError(f"the connection broke: {exc!r}", request=request)
    return exc


class _Body(httpx.AsyncByteStream):
    """A response body: each iteration step is everything one socket read completed."""

    def __init__(
        self,
        pool: UpstreamPool,
        conn: Conn,
        parsed: ParsedResponse,
        parser: Any,
        watchdog: _Watchdog,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._pool, self._conn, self._parsed, self._parser = pool, conn, parsed, parser
        self._watchdog, self._request, self._read_timeout = watchdog, request, read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parsed, link, watchdog = self._parsed, self._conn.link, self._watchdog
        try:
            while True:
                if parsed.chunks:
                    body = b"".join(parsed.chunks) if len(parsed.chunks) > 1 else parsed.chunks[0]
                    parsed.chunks.clear()
                    if parsed.done:
                        self._release()
                    yield body
                    if parsed.done:
                        return
                    continue
                if parsed.done:
                    self._release()
                    return
                data = await _read(link, watchdog, self._read_timeout)
                if not data:
                    if parsed.framed:
                        raise httpx.RemoteProtocolError(
                            "peer closed connection without sending complete message body", request=self._request
                        )
                    parsed.done = True  # delimited by the connection closing
                    continue
                self._parser.feed_data(data)
        except Exception as exc:
            self._release(keep=False)
            raise _httpx_error(exc, watchdog, self._request) from None

    def _release(self, *, keep: bool = True) -> None:
        if self._released:
            return
        self._released = True
        self._watchdog.stop()
        parsed = self._parsed
        if keep and parsed.done and parsed.framed and parsed.keep_alive:
            self._pool.give_back(self._conn)
        else:
            self._pool.discard(self._conn)

    async def aclose(self) -> None:
        """Give the connection back when the body was read to its end, else close it."""
        self._release()
