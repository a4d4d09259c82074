"""The event contract shared by services (publishers) and ``app.streams`` (the hub that delivers).

An event is ``{id, topic, type, at, data}``. Ids are decimal strings of one counter that grows across
every topic of a deployment, so one ``Last-Event-ID`` resumes a connection carrying many topics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec


class Event(msgspec.Struct, frozen=True):
    """One published event."""

    id: str
    topic: str
    type: str
    at: str
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        """The id as an integer, for ordering."""
        return int(self.id)


_second: tuple[int, str] = (0, "")  # the last whole second and its text: one strftime per second


def now_iso() -> str:
    """Current UTC time as ISO 8601 with microseconds and a ``Z``."""
    global _second
    now = time.time()
    second, text = _second  # one read of one tuple: safe from any thread
    if second != int(now):
        second = int(now)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{int((now - second) * 1_000_000):06d}Z"


class EventPublisher(Protocol):
    """What services need of the hub: publish one event to a topic and, with the same id, to others."""

    async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
        """Publish; returns the event id. ``also`` names more topics that carry the same event."""
        ...


def workspace_topic(workspace_id: str) -> str:
    """Lifecycle topic of a workspace."""
    return f"workspace:{workspace_id}"


def workspace_logs_topic(workspace_id: str) -> str:
    """Log-line topic of a workspace."""
    return f"workspace:{workspace_id}:logs"


def workspace_exec_topic(workspace_id: str) -> str:
    """Exec-output topic of a workspace."""
    return f"workspace:{workspace_id}:exec"


def user_topic(user_id: int) -> str:
    """Everything about one user's workspaces."""
    return f"user:{user_id}"


def ai_topic(request_id: str) -> str:
    """Tokens of one AI request."""
    return f"ai:{request_id}"


ADMIN_TOPIC = "admin"


def lifecycle_topics(workspace_id: str, owner_id: int) -> tuple[str, tuple[str, ...]]:
    """Primary topic and fan-out topics for a workspace lifecycle event."""
    return workspace_topic(workspace_id), (user_topic(owner_id), ADMIN_TOPIC)
