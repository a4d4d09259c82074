"""Byte pipes to the IDE for the relay: a small asyncio protocol with awaitable ``read`` and ``send``.

Why not anyio's ``connect_tcp`` streams: on the relay's hot path each of their ``send`` calls yields to the
event loop once and each ``receive`` resumes and pauses the transport's reading; a small relayed request
or WebSocket message is cheap enough that this is a measurable share of its cost (``bench/relay.py``;
about 7 µs of ~35 µs per request in-process). ``Link`` reads continuously into a buffer (pausing only when
``HIGH_WATER`` bytes wait), ``read`` returns without yielding when data is already there, and ``send``
waits only while the kernel buffer is full. Tasks still belong to anyio task groups and cancel scopes:
cancelling a task waiting in ``read``/``send`` cancels the future it awaits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol, cast

import anyio

HIGH_WATER = 256 * 1024


class Meter(Protocol):
    """Where a spliced pair counts the bytes it copies (the workspace's relay counters)."""

    bytes_up: int
    bytes_down: int


class LinkClosed(ConnectionError):
    """The connection was closed by us (``abort``) or reset by the IDE."""


class Link(asyncio.Protocol):
    """One TCP connection to an IDE."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._peer: asyncio.Transport | None = None
        self._meter: Meter | None = None  # spliced: counts what goes to ``_peer`` in its ``bytes_down``

    # -- asyncio callbacks --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.write(data)
            self._meter.bytes_down += len(data)  # type: ignore[union-attr]  # set together with _peer
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self._peer.close()
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._peer is not None:
            self._peer.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._peer is not None and not self._peer.is_closing():
            self._peer.resume_reading()
        self._wake_writer()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    # -- for the relay ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is gone (or going)."""
        return self.transport is None or self.transport.is_closing()

    async def read(self) -> bytes:
        """Everything received so far (waiting for something if nothing is); ``b""`` at end of stream.

        Raises ``LinkClosed`` when the connection was aborted or reset.
        """
        while not self._chunks:
            if self._error is not None:
                raise LinkClosed(str(self._error))
            if self._eof:
                return b""
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        """Write ``data``; waits only while the connection's send buffer is above its high-water mark."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise LinkClosed("the connection is closed")
        transport.write(data)
        while self._write_paused:
            if transport.is_closing():
                raise LinkClosed("the connection is closed")
            self._writer = asyncio.get_running_loop().create_future()
            try:
                await self._writer
            finally:
                self._writer = None

    def write_now(self, data: bytes) -> None:
        """Write without waiting (small control frames; a closed connection drops them)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def splice(self, peer: asyncio.Transport, meter: Meter) -> None:
        """From now on write everything the IDE sends straight to ``peer`` (the browser's socket), adding each
        piece's size to ``meter.bytes_down``; bytes already read go first."""
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            peer.write(data)
            meter.bytes_down += len(data)
        self._peer, self._meter = peer, meter
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        if self._eof and not peer.is_closing():
            peer.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data; a task waiting in ``read`` gets ``LinkClosed``."""
        if self._error is None:
            self._error = LinkClosed("aborted")
        if self.transport is not None:
            self.transport.abort()
        self._wake_reader()
        self._wake_writer()


async def open_link(host: str, port: int, within: float) -> Link:
    """Connect to ``host:port`` (``OSError`` when refused, ``TimeoutError`` after ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    with anyio.fail_after(within):
        _, link = await loop.create_connection(Link, host, port)
    return link
