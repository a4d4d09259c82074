"""Opening the event hub for the app's lifetime: the Redis backend when a URL is set, else in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from app.settings import Settings
from app.streams.events.hub import SUBSCRIBER_BUFFER, Hub, InProcessHub
from app.streams.events.redis_hub import open_redis_hub


@asynccontextmanager
async def open_hub(settings: Settings, *, buffer: int = SUBSCRIBER_BUFFER) -> AsyncIterator[Hub]:
    """Open the hub for the app's lifetime: Redis when ``settings.redis_url`` is set, else in-process.

    ``buffer`` is how many events a subscriber may fall behind before it is reset (slow consumer).
    """
    try:
        async with anyio.create_task_group() as tasks:
            if settings.redis_url:
                async with open_redis_hub(settings, tasks, buffer=buffer) as hub:
                    yield hub
            else:
                memory = InProcessHub(settings, buffer)
                tasks.start_soon(memory.fanout.heartbeats, settings.sse_heartbeat)
                try:
                    yield memory
                finally:
                    memory.fanout.close_all()
            tasks.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The hub's own tasks do not fail; give the caller back the error its block raised, unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
