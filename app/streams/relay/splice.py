"""Spliced WebSockets: after the handshake, the browser's socket and the IDE's socket are joined byte for byte.

An ASGI WebSocket hands the app decoded messages: uvicorn parses every frame from the browser and builds
every frame back (compressing them too, with permessage-deflate), so a relay over ASGI pays for two
WebSocket implementations per message. Measured with ``bench/relay.py``: a bare ASGI echo on uvicorn
costs ~22 µs of CPU per message, about what configurable-http-proxy needs to relay one. Proxies (nginx,
configurable-http-proxy) do not parse frames at all; with this protocol the hub does not either.

``SpliceProtocol`` is uvicorn's sans-I/O WebSocket protocol plus one ASGI extension, ``codehub.splice``.
The app authorizes the upgrade as usual, performs the handshake with the IDE itself (forwarding the
browser's key, extensions and subprotocols, so everything is negotiated end to end), then sends
``{"type": "codehub.splice", "response": <101 head>, "leftover": <bytes>, "link": Link, "on_up": f,
"on_down": f}``: the protocol writes the IDE's answer to the browser and from then on copies bytes in both
directions inside the event loop's callbacks, with back-pressure (a full socket pauses reading the other).
The app's ``receive()`` returns ``websocket.disconnect`` when either side has gone.

Serve with ``uvicorn.run(app, ws=SpliceProtocol)`` (``codehub serve`` does). Any other server (or
``ws="websockets-sansio"`` in tests) lacks the extension, and the relay falls back to relaying messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.streams.net.io import Link

SPLICE = "codehub.splice"


class SpliceProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the ``codehub.splice`` extension."""

    _link: Link | None = None
    _on_up: Callable[[int], None] = staticmethod(lambda _: None)  # replaced together with ``_link``

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
        if self.handshake_complete or self.initial_response is not None or self.transport.is_closing():
            message["link"].abort()
            return
        self.handshake_complete = True
        link: Link = message["link"]
        self._link, self._on_up = link, message["on_up"]
        self.transport.write(message["response"])
        leftover = message.get("leftover") or b""
        if leftover:  # bytes that came with the IDE's answer, before anything the link buffered since
            self.transport.write(leftover)
            message["on_down"](len(leftover))
        link.splice(self.transport, message["on_down"])

    def data_received(self, data: bytes) -> None:
        link = self._link
        if link is None:
            super().data_received(data)
            return
        link.write_now(data)
        self._on_up(len(data))

    def pause_writing(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.pause_reading()
        super().pause_writing()

    def resume_writing(self) -> None:
        if self._link is not None and self._link.transport is not None and not self._link.transport.is_closing():
            self._link.transport.resume_reading()
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
