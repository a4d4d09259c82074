"""Reading a Redis pub/sub connection that may die silently: shared by the event hub and revocations."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PING_AFTER = 5.0  # seconds of silence before the connection is pinged
DEAD_AFTER = 15.0  # seconds of silence (pings unanswered included) before it counts as dead


async def pump_messages(pubsub: Any, on_message: Callable[[Any], None]) -> None:
    """Forever: hand each published message's data to ``on_message``.

    A quiet connection is pinged; one that answers nothing for ``DEAD_AFTER`` seconds raises
    ``ConnectionError`` so the caller reconnects (a half-open TCP connection never errors by itself).
    """
    last_rx = last_ping = time.monotonic()
    while True:
        message = await pubsub.get_message(timeout=1.0)
        now = time.monotonic()
        if message is None:
            if now - last_rx > DEAD_AFTER:
                raise ConnectionError(f"no answer on pub/sub for {DEAD_AFTER:.0f} s")
            if now - last_rx > PING_AFTER and now - last_ping > PING_AFTER:
                last_ping = now
                await pubsub.ping()
            continue
        last_rx = now
        if message["type"] == "message":
            on_message(message["data"])
