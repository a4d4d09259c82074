"""Who is connected to a workspace, across hub processes: the ``present`` list of a shared workspace.

Each process counts its own open connections (``Sessions``); without Redis that is the whole answer. With
Redis every process also keeps its counts in one hash per workspace, ``<prefix>:presence:<workspace id>``: a
field per (process, user) holding the username, the number of connections and a deadline ``presence_ttl``
seconds ahead. A process rewrites its fields on every change and every third of the TTL, and removes them
when it stops. A reader adds its own counts (from memory) to the other processes' fields whose deadline has
not passed, so a process that dies without cleaning up stops counting at most ``presence_ttl`` seconds later.
Deadlines are wall-clock milliseconds: the hub hosts' clocks must agree to within a few seconds (NTP).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Any

import anyio
import msgspec

from app.streams.relay.sessions import Sessions

log = logging.getLogger(__name__)

Entry = tuple[str, int, int]  # username, open connections, deadline (epoch ms)


class Presence:
    """This process's open connections, shared with the other hub processes through Redis when there is one."""

    def __init__(self, sessions: Sessions, redis: Any, prefix: str, ttl: float) -> None:
        self.sessions = sessions
        self.process = secrets.token_hex(6)
        self._redis = redis
        self._prefix = f"{prefix}:presence:"
        self._ttl_ms = int(ttl * 1000)
        self._written: dict[str, set[str]] = {}
        self._changed = anyio.Event()
        sessions.on_change = self._mark

    def _mark(self) -> None:
        self._changed.set()

    def key(self, workspace_id: str) -> str:
        """The Redis hash holding the workspace's presence."""
        return self._prefix + workspace_id

    async def of(self, workspace_id: str) -> list[tuple[int, str, int]]:
        """(user id, username, open connections) of everyone connected to the workspace through any hub
        process, by username."""
        counts = self.sessions.present(workspace_id)
        if self._redis is not None:
            for (user_id, username), n in (await self._others(workspace_id)).items():
                counts[(user_id, username)] = counts.get((user_id, username), 0) + n
        return sorted(((uid, name, n) for (uid, name), n in counts.items()), key=lambda row: (row[1], row[0]))

    async def _others(self, workspace_id: str) -> dict[tuple[int, str], int]:
        key = self.key(workspace_id)
        try:
            fields: dict[bytes, bytes] = await self._redis.hgetall(key)
        except Exception as exc:  # Redis is down: this process's own connections still count
            log.warning("could not read the presence of workspace %s: %s", workspace_id, exc)
            return {}
        now = time.time() * 1000
        counts: dict[tuple[int, str], int] = {}
        expired: list[bytes] = []
        for field, value in fields.items():
            process, _, user = field.decode("latin-1").partition(":")
            if process == self.process:
                continue
            try:
                username, n, deadline = msgspec.json.decode(value, type=Entry)
                user_id = int(user)
            except (msgspec.DecodeError, ValueError):
                expired.append(field)
                continue
            if deadline < now:  # its process stopped renewing it: gone (or dead)
                expired.append(field)
                continue
            counts[(user_id, username)] = counts.get((user_id, username), 0) + n
        if expired:  # readers tidy up; the deadline already ruled these fields out
            with contextlib.suppress(Exception):
                await self._redis.hdel(key, *expired)
        return counts

    async def run(self) -> None:
        """While the app lives, keep this process's counts in Redis (on change, and renewed every third of the
        TTL); remove them when it stops."""
        if self._redis is None:
            return
        try:
            while True:
                with anyio.move_on_after(self._ttl_ms / 3000):
                    await self._changed.wait()
                self._changed = anyio.Event()
                try:
                    await self._write()
                except Exception as exc:  # Redis is down: the next change or renewal writes everything again
                    log.warning("could not share this process's presence: %s", exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await self._clear()
                except Exception as exc:
                    log.warning("could not remove this process's presence (it expires by itself): %s", exc)

    async def _write(self) -> None:
        deadline = int(time.time() * 1000) + self._ttl_ms
        current: dict[str, dict[str, bytes]] = {}
        for workspace_id in self.sessions.workspaces():
            present = self.sessions.present(workspace_id)
            if present:
                current[workspace_id] = {
                    f"{self.process}:{uid}": msgspec.json.encode((name, n, deadline))
                    for (uid, name), n in present.items()
                }
        async with self._redis.pipeline(transaction=False) as pipe:
            for workspace_id, fields in current.items():
                key = self.key(workspace_id)
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, self._ttl_ms)  # the whole hash goes once no process renews it
                stale = self._written.get(workspace_id, set()) - fields.keys()
                if stale:
                    pipe.hdel(key, *stale)
            for workspace_id in self._written.keys() - current.keys():
                pipe.hdel(self.key(workspace_id), *self._written[workspace_id])
            await pipe.execute()
        self._written = {workspace_id: set(fields) for workspace_id, fields in current.items()}

    async def _clear(self) -> None:
        if not self._written:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for workspace_id, fields in self._written.items():
                pipe.hdel(self.key(workspace_id), *fields)
            await pipe.execute()
        self._written = {}
