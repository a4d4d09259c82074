"""Event hub (placeholder: in-process only). The full version (Redis backend, replay) replaces this."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from app.events import Event, now_iso
from app.settings import Settings


class InProcessHub:
    """Minimal hub: ids from a counter, no subscribers yet."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
        """Publish an event and return its id."""
        event = Event(str(next(self._ids)), topic, type, now_iso(), data)
        return event.id

    async def check(self) -> None:
        """Readiness: the in-process hub is always up."""


@asynccontextmanager
async def open_hub(settings: Settings) -> AsyncIterator[InProcessHub]:
    """Open the hub for the app's lifetime."""
    yield InProcessHub()
