"""Upstream HTTP/1.1 connections shared by the relay and the LLM transport: a keep-alive pool and a parser.

``UpstreamPool`` keeps idle ``Link`` connections per ``(host, port)``; ``ParsedResponse`` feeds httptools
(llhttp, in C) and collects the status, headers and body pieces of one response. Both the relay's HTTP leg
(``app.streams.relay.http``) and ``LinkTransport`` (``app.streams.net.http_transport``) build on them.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

import anyio
import httptools

from app.streams.net.io import Link, open_link


class Waiter(Protocol):
    """A request waiting for its response head; the pool's sweep marks it when it took too long."""

    timed_out: bool


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
IO_ERRORS = (OSError,)  # LinkClosed is a ConnectionError


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


class ParsedResponse:
    """httptools callbacks collecting one response (also used by ``app.streams.net.http_transport``)."""

    __slots__ = ("chunks", "done", "framed", "headers", "headers_done", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.framed = False
        self.keep_alive = False
        self.parser: Any = None

    @classmethod
    def new(cls) -> tuple[ParsedResponse, Any]:
        """Callbacks and their parser."""
        parsed = cls()
        parser = parsed.parser = httptools.HttpResponseParser(parsed)
        return parsed, parser

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (103 Early Hints): the real one follows
            self.headers.clear()
            self.headers_done = self.framed = False
            return
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is complete
        self.parser = None


class Conn:
    """One upstream connection and where it goes."""

    __slots__ = ("idle_since", "key", "link")

    def __init__(self, key: tuple[str, int], link: Link) -> None:
        self.key = key
        self.link = link
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
        self.waiting: dict[Waiter, tuple[float, Conn]] = {}
        self.opened = 0
        self.reused = 0
        self.open_now = 0

    async def connect(self, key: tuple[str, int], within: float | None = None) -> Conn:
        """A new connection (``UpstreamError`` when refused, unreachable or slower than ``within`` seconds,
        by default ``connect_timeout``)."""
        try:
            link = await open_link(key[0], key[1], self.connect_timeout if within is None else within)
        except TimeoutError:
            raise UpstreamError(f"connecting to {key[0]}:{key[1]} timed out", timeout=True) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from None
        self.opened += 1
        self.open_now += 1
        return Conn(key, link)

    def take(self, key: tuple[str, int]) -> Conn | None:
        """An idle connection to ``key`` that is young enough, or None."""
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = time.monotonic() - self.idle_ttl
        while idle:
            conn = idle.pop()
            if conn.idle_since >= limit and not conn.link.closed:
                self.reused += 1
                return conn
            self.discard(conn)
        return None

    def give_back(self, conn: Conn) -> None:
        """Keep ``conn`` for reuse (or close the oldest when the host already has enough idle ones)."""
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle_per_host:
            self.discard(idle.popleft())
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def discard(self, conn: Conn) -> None:
        """Close ``conn`` at once."""
        self.open_now -= 1
        conn.link.abort()

    def drop_host(self, key: tuple[str, int]) -> None:
        """Close every idle connection to ``key`` (its IDE stopped or moved)."""
        for conn in self._idle.pop(key, ()):
            self.discard(conn)

    def close(self) -> None:
        """Close every idle connection."""
        for key in list(self._idle):
            self.drop_host(key)

    async def expire(self, every: float = 1.0) -> None:
        """Forever: abort requests whose IDE has not started answering within ``header_timeout``.

        One sweep a second instead of a timer per request: ``anyio.fail_after`` costs about as much as the
        rest of a small relayed request (measured with ``bench/relay.py``)."""
        while True:
            await anyio.sleep(every)
            now = time.monotonic()
            for exchange, (deadline, conn) in list(self.waiting.items()):
                if deadline <= now:
                    exchange.timed_out = True
                    conn.link.abort()  # its reader gets LinkClosed

    def stats(self) -> dict[str, int]:
        """Connection counters."""
        return {
            "upstream_opened": self.opened,
            "upstream_reused": self.reused,
            "upstream_open": self.open_now,
            "upstream_idle": sum(len(q) for q in self._idle.values()),
        }
