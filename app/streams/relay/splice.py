"""Spliced WebSockets: after the handshake, the browser's socket and the IDE's socket are joined byte for byte.

An ASGI WebSocket hands the app decoded messages: uvicorn parses every frame from the browser and builds
every frame back (compressing them too, with permessage-deflate), so a relay over ASGI pays for two
WebSocket implementations per message. Measured with ``bench/relay.py``: a bare ASGI echo on uvicorn
costs ~22 µs of CPU per message, about what configurable-http-proxy needs to relay one. Proxies (nginx,
configurable-http-proxy) do not parse frames at all; with this protocol the hub does not either.

``SpliceProtocol`` is uvicorn's sans-I/O WebSocket protocol plus one ASGI extension, ``codehub.splice``.
The app authorizes the upgrade as usual, performs the handshake with the IDE itself (forwarding the
browser's key, extensions and subprotocols, so everything is negotiated end to end), then sends
``{"type": "codehub.splice", "response": <101 head>, "leftover": <bytes>, "link": Link, "counters": c}``:
the protocol writes the IDE's answer to the browser and from then on copies bytes in both directions inside
the event loop's callbacks, with back-pressure (a full socket pauses reading the other), adding each piece's
size to ``c.bytes_up`` or ``c.bytes_down`` (activity is read off those counters once a second, so a piece
costs one read callback, one write and an addition).
The app's ``receive()`` returns ``websocket.disconnect`` when either side has gone.

Serve with ``uvicorn.run(app, ws=SpliceProtocol)`` (``codehub serve`` does). Any other server (or
``ws="websockets-sansio"`` in tests) lacks the extension, and the relay falls back to relaying messages.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.streams.net.io import Link, Meter

SPLICE = "codehub.splice"


class SpliceProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the ``codehub.splice`` extension."""

    _link: Link | None = None
    _ide: asyncio.Transport | None = None  # the link's transport, set together with ``_link``
    _counters: Meter  # the workspace's relay counters, set together with ``_link``

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.handshake_complete:
            scope["extensions"][SPLICE] = {}

    async def send(self, message: Any) -> None:
        if message["type"] == SPLICE:
            self._splice(message)
            return
        await super().send(message)

    def _splice(self, message: dict[str, Any]) -> None:
        link: Link = message["link"]
        if self.handshake_complete or self.initial_response is not None or self.transport.is_closing() or link.closed:
            link.abort()
            return
        self.handshake_complete = True
        self._link, self._ide, self._counters = link, link.transport, message["counters"]
        self.transport.write(message["response"])
        leftover = message.get("leftover") or b""
        if leftover:  # bytes that came with the IDE's answer, before anything the link buffered since
            self.transport.write(leftover)
            self._counters.bytes_down += len(leftover)
        link.splice(self.transport, self._counters)

    def data_received(self, data: bytes) -> None:
        ide = self._ide
        if ide is None:
            super().data_received(data)
            return
        if not ide.is_closing():
            ide.write(data)
        self._counters.bytes_up += len(data)

    def pause_writing(self) -> None:
        if self._ide is not None:
            self._ide.pause_reading()
        super().pause_writing()

    def resume_writing(self) -> None:
        if self._ide is not None and not self._ide.is_closing():
            self._ide.resume_reading()
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._link is not None:
            self._link.abort()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._link is not None:
            self._link.abort()
            self.transport.close()
            return
        super().shutdown()
