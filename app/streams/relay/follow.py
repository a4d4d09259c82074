"""The relay follows lifecycle events (every hub process's, on the ``admin`` topic): a workspace that changes
state loses its cached route, counters and activity; one whose grants changed has its cached grants dropped
and the connections that lost their access closed. While the events are down, the route TTL bounds staleness.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from app.events import ADMIN_TOPIC
from app.services.auth.access import Level
from app.streams.relay.front import Relay
from app.streams.relay.sessions import Session

log = logging.getLogger(__name__)

LIFECYCLE_END = ("workspace.stopped", "workspace.deleted", "workspace.failed")


async def follow_lifecycle(relay: Relay) -> None:
    """Drop cached routes (and idle connections, counters) when workspaces change state; forever."""
    while True:
        try:
            async with relay.deps.events.subscribe([ADMIN_TOPIC]) as subscription:
                relay.routes.clear()
                while True:
                    batch = await subscription.next_batch()
                    if batch is None:
                        break
                    for item in batch:
                        if item.type == "workspace.access_changed":
                            await _access_changed(relay, item)
                        elif item.type.startswith("workspace.") or item.type == "stream.reset":
                            _on_event(relay, item)
        except Exception as exc:  # the hub is down: the route TTL still bounds staleness
            log.warning("relay lost the lifecycle events (%s); retrying", exc)
        relay.routes.clear()
        await anyio.sleep(2.0)


async def _access_changed(relay: Relay, item: Any) -> None:
    """A workspace's grants changed (in any process): forget cached answers, close connections that lost
    their access."""
    workspace_id = item.event.data.get("workspace_id")
    if not isinstance(workspace_id, str):
        return
    grants = relay.deps.workspaces.grants
    grants.forget(workspace_id)

    async def level_of(session: Session) -> Level | None:
        return await relay.deps.workspaces.level(session.principal, session)

    try:
        closed = await relay.sessions.recheck(workspace_id, level_of)
    except Exception as exc:  # the database is down: the next access change or reconnect checks again
        log.warning("could not recheck the connections of workspace %s: %s", workspace_id, exc)
        return
    if closed:
        log.info("closed %d connection(s) to workspace %s after its access changed", closed, workspace_id)


def _on_event(relay: Relay, item: Any) -> None:
    if item.type == "stream.reset":
        relay.routes.clear()
        relay.deps.workspaces.grants.forget()
        return
    workspace_id = item.event.data.get("workspace_id")
    if not isinstance(workspace_id, str):
        return
    relay.routes.forget(workspace_id)
    if item.type in LIFECYCLE_END or item.type == "workspace.stopping":
        relay.stats.forget(workspace_id)
        relay.activity.forget(workspace_id)
