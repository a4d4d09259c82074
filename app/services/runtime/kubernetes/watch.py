"""Lifecycle events from a watch on the hub's workspace pods (instead of Docker's event stream).

The watch resumes from the last ``resourceVersion`` it saw (bookmarks keep it fresh) and lists again when
the API answers 410 Gone; the list is compared with what was known, so a change missed while the watch was
down still becomes an event. Transitions: ``start`` (the IDE container runs), ``die`` (it ended, with its
exit code), ``oom`` (it ended OOMKilled), ``destroy`` (the pod is gone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.services.runtime.base import LABEL_HUB, LABEL_WORKSPACE, RuntimeEvent
from app.services.runtime.common import iso_from_unix
from app.services.runtime.kubernetes.connection import KubeConnection, KubeError
from app.services.runtime.kubernetes.manifests import LABEL_ROLE, ROLE_WORKSPACE
from app.services.runtime.kubernetes.states import is_running, state_of, terminated, unix_of

WATCH_SECONDS = 290


class Seen(msgspec.Struct, frozen=True):
    """What the watch last knew of one pod."""

    uid: str
    running: bool
    ended: bool


@dataclass
class WatchCursor:
    """Where a watch stopped: the last ``resourceVersion`` and the pods known then (kept across reconnects)."""

    version: str = ""
    known: dict[str, Seen] = field(default_factory=dict)
    listed: bool = False


def selector(hub_id: str) -> str:
    """The label selector of this hub deployment's workspace pods."""
    return f"{LABEL_HUB}={hub_id},{LABEL_ROLE}={ROLE_WORKSPACE}"


def transitions(
    before: Seen | None, pod: dict[str, Any], *, deleted: bool = False
) -> tuple[Seen | None, list[RuntimeEvent]]:
    """The events between what was known of a pod and what it is now (and what to know from now on)."""
    meta = pod.get("metadata") or {}
    workspace_id = (meta.get("labels") or {}).get(LABEL_WORKSPACE, "")
    end = terminated(pod)
    now = Seen(str(meta.get("uid", "")), is_running(pod), end is not None)
    if before is not None and before.uid != now.uid:
        before = None
    events: list[RuntimeEvent] = []

    def event(name: str, code: int | None = None, at: str = "") -> None:
        events.append(RuntimeEvent(workspace_id=workspace_id, event=name, exit_code=code, at=at))

    if now.running and not (before and before.running):
        event("start", at=state_of(pod).started_at or "")
    if end is not None and not (before and before.ended):
        code = end.get("exitCode")
        finished = str(end.get("finishedAt") or "")
        if end.get("reason") == "OOMKilled":
            event("oom", int(code) if code is not None else None, finished)
        event("die", int(code) if code is not None else None, finished)
    if deleted:
        event("destroy", at=iso_from_unix(unix_of(meta["deletionTimestamp"])) if meta.get("deletionTimestamp") else "")
        return None, events
    return now, events


async def watch_pods(
    conn: KubeConnection, hub_id: str, cursor: WatchCursor | None = None
) -> AsyncIterator[RuntimeEvent]:
    """Events of this hub's workspace pods, live, until the caller leaves; resumes where ``cursor`` stopped."""
    cursor = cursor or WatchCursor()
    path = conn.path("pods")
    while True:
        if not cursor.version:
            async for item in _relist(conn, hub_id, cursor):
                yield item
        params = {
            "labelSelector": selector(hub_id),
            "resourceVersion": cursor.version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        try:
            async with aclosing(conn.watch(path, params)) as changes:
                async for kind, obj in changes:
                    for item in _apply(cursor, obj, deleted=kind == "DELETED"):
                        yield item
                    cursor.version = str((obj.get("metadata") or {}).get("resourceVersion") or cursor.version)
        except KubeError as exc:
            if exc.api_status != 410:
                raise
            cursor.version = ""


def _apply(cursor: WatchCursor, pod: dict[str, Any], *, deleted: bool) -> list[RuntimeEvent]:
    name = pod["metadata"]["name"]
    seen, events = transitions(cursor.known.get(name), pod, deleted=deleted)
    if seen is None:
        cursor.known.pop(name, None)
    else:
        cursor.known[name] = seen
    return events


async def _relist(conn: KubeConnection, hub_id: str, cursor: WatchCursor) -> AsyncIterator[RuntimeEvent]:
    """List the pods (a first start, or after 410 Gone): what changed since the cursor's pods are events."""
    listing = await conn.request("GET", conn.path("pods"), params={"labelSelector": selector(hub_id)})
    current: dict[str, Seen] = {}
    for pod in listing.get("items") or []:
        name = pod["metadata"]["name"]
        seen, events = transitions(cursor.known.get(name), pod)
        if seen is not None:
            current[name] = seen
        if cursor.listed:
            for item in events:
                yield item
    if cursor.listed:
        for name in set(cursor.known) - set(current):
            labels = {LABEL_WORKSPACE: name.removeprefix("codehub-")}
            gone = {"metadata": {"name": name, "uid": cursor.known[name].uid, "labels": labels}}
            for item in transitions(cursor.known[name], gone, deleted=True)[1]:
                yield item
    cursor.known, cursor.listed = current, True
    cursor.version = str(listing["metadata"]["resourceVersion"])
