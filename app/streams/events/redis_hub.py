"""Redis backend of the event hub: one Lua script per publish, one pub/sub connection per process.

Keys (``P`` = ``settings.redis_prefix``): ``P:events:seq`` (the id counter), ``P:events:t:<topic>`` (a capped
stream per topic; entry id ``<n>-0``, fields ``e`` = event JSON and ``h`` = ``"<type> <topics…>"``),
``P:events:topics`` (hash: topic -> last id, to tell "expired" from "never published"), channel ``P:events``
(message ``"<n> <type> <topics…>\\n<event JSON>"``). Redis runs scripts one at a time, so pub/sub order is
id order and a process's last seen id is a cursor from which the streams give back anything it missed.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.errors import ServiceUnavailable
from app.events import Event
from app.pubsub import pump_messages
from app.settings import Settings
from app.streams.events.fanout import (
    HISTORY_TRIMMED,
    HUB_UNAVAILABLE,
    UNKNOWN_CURSOR,
    Fanout,
    Item,
    check_topic,
    encode_body,
    parse_cursor,
    reset_item,
    topic_list,
)
from app.streams.events.hub import REPLAY_PAGE, SUBSCRIBER_BUFFER, subscription_topics
from app.streams.events.subscription import Subscription

log = logging.getLogger(__name__)

PUBLISH_LUA = """
local n = redis.call('INCR', KEYS[1])
local topics = {}
for i = 6, #ARGV do topics[#topics + 1] = ARGV[i] end
-- ids must grow in every stream: if the counter was lost while streams were kept, jump past them
local jumped = false
for _, last in ipairs(redis.call('HMGET', KEYS[2], unpack(topics))) do
  if last and tonumber(last) >= n then n = tonumber(last) + 1; jumped = true end
end
if jumped then redis.call('SET', KEYS[1], n) end
local sn = tostring(n)
local id = sn .. '-0'
local event = '{"id":"' .. sn .. '",' .. ARGV[4]
local ttl = tonumber(ARGV[3])
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[2], id, 'e', event, 'h', ARGV[5])
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  redis.call('HSET', KEYS[2], ARGV[3 + i], sn)
end
redis.call('PUBLISH', ARGV[1], sn .. ' ' .. ARGV[5] .. '\\n' .. event)
return n
"""

REDIS_ERRORS = (RedisError, OSError)
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
FIRST_CONNECT_WAIT = 3.0
SUBSCRIBE_WAIT = 2.0


def _unavailable(exc: BaseException | None = None) -> ServiceUnavailable:
    detail = "the event hub (Redis) is not answering"
    return ServiceUnavailable(f"{detail}: {exc}" if exc else detail, code="events_unavailable")


# XRANGE answers of a client without decode_responses (redis-py annotates every mode at once).
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def _entry_items(entries: StreamEntries) -> list[tuple[Item, list[str]]]:
    out = []
    for entry_id, fields in entries:
        if b"h" in fields and b"e" in fields:  # entries not written by the publish script are skipped
            head = fields[b"h"].decode(errors="replace").split(" ")
            out.append((Item(int(entry_id.split(b"-", 1)[0]), head[0], fields[b"e"]), head[1:]))
    return out


class RedisHub:
    """Hub for many processes sharing one Redis (see the module docstring for the layout)."""

    backend = "redis"

    def __init__(self, settings: Settings, buffer: int = SUBSCRIBER_BUFFER) -> None:
        prefix = settings.redis_prefix
        self.fanout = Fanout(buffer)
        self._seq_key = f"{prefix}:events:seq"
        self._topics_key = f"{prefix}:events:topics"
        self._stream_prefix = f"{prefix}:events:t:"
        self._channel = f"{prefix}:events"
        self._maxlen = settings.event_history
        self._ttl = int(settings.event_ttl)
        self.reader_name = f"{prefix}:events-reader:{os.getpid()}:{secrets.token_hex(3)}"
        common: dict[str, Any] = {"socket_connect_timeout": 3, "socket_keepalive": True}
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=5, retry=Retry(NoBackoff(), 1), **common)
        # No retries on the pub/sub connection: a silent reconnect inside redis-py would hide a gap.
        self._sub_redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            client_name=self.reader_name,
            **common,
        )
        self._script = self.redis.register_script(PUBLISH_LUA)
        self._last_seen: int | None = None
        self._listening = False
        self._up = anyio.Event()
        self._counters = {
            "published": 0,
            "publish_errors": 0,
            "reconnects": 0,
            "recovered": 0,
            "replayed": 0,
            "outages": 0,
        }

    def _stream(self, topic: str) -> str:
        return self._stream_prefix + topic

    async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
        """Publish one event (one script run: INCR, XADD per topic, PUBLISH); returns its id.

        Raises ``ServiceUnavailable`` (``events_unavailable``) when Redis does not answer.
        """
        keys, args = self.script_call(topic, type, data, also)
        try:
            seq = await self._script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self._counters["publish_errors"] += 1
            raise _unavailable(exc) from exc
        self._counters["published"] += 1
        return str(seq)

    def script_call(
        self, topic: str, type: str, data: dict[str, Any], also: Sequence[str] = ()
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the publish script for one event."""
        topics = topic_list(topic, also)
        body = encode_body(topic, type, data)
        keys = [self._seq_key, self._topics_key, *(self._stream(t) for t in topics)]
        return keys, [self._channel, self._maxlen, self._ttl, body[1:], " ".join([type, *topics]), *topics]

    async def check(self) -> None:
        """Raise ``ServiceUnavailable`` unless Redis answers and the pub/sub connection is up."""
        try:
            await self.redis.ping()
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc
        if not self._listening:
            raise _unavailable()

    async def wait_listening(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the pub/sub connection; True when it is up."""
        if not self._listening:
            with anyio.move_on_after(seconds):
                await self._up.wait()
        return self._listening

    def stats(self) -> dict[str, Any]:
        """Counters: subscribers, published, delivered, dropped (slow-consumer resets), reconnects, …"""
        return {
            "backend": self.backend,
            "up": self._listening,
            "last_id": self._last_seen or 0,
            **self._counters,
            **self.fanout.stats(),
        }

    @asynccontextmanager
    async def subscribe(
        self, topics: Iterable[str], last_event_id: str | int | None = None, since_earliest: bool = False
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``topics``: replay after ``last_event_id`` (or everything with ``since_earliest``).

        Raises ``ServiceUnavailable`` when Redis is down (after a short wait for a reconnect).
        """
        names = subscription_topics(topics)
        if not await self.wait_listening(SUBSCRIBE_WAIT):
            raise _unavailable()
        sub = self.fanout.add(names)
        try:
            try:
                after, resets = await self._plan(names, parse_cursor(last_event_id), since_earliest)
            except REDIS_ERRORS as exc:
                raise _unavailable(exc) from exc
            replay = self._replay(names, after) if after is not None else None
            subscription = Subscription(sub, resets, replay, after or 0, self._count_replayed, self.fanout.end)
            try:
                yield subscription
            finally:
                await subscription.aclose()
        finally:
            self.fanout.remove(sub)

    def _count_replayed(self, n: int) -> None:
        self._counters["replayed"] += n

    async def last_event(self, topic: str) -> Event | None:
        """The newest event history holds for ``topic`` (None when none); ``ServiceUnavailable`` when down."""
        try:
            entries = await self.redis.xrevrange(self._stream(check_topic(topic)), count=1)
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc
        items = _entry_items(cast(StreamEntries, entries))
        return items[0][0].event if items else None

    async def _plan(
        self, names: tuple[str, ...], cursor: int | None, since_earliest: bool
    ) -> tuple[int | None, list[Item]]:
        if since_earliest:
            return 0, []
        if cursor is None:
            return None, []
        seq, trimmed = await self._trimmed(names, max(cursor, 0))
        if cursor < 0 or cursor > seq:
            return 0, [reset_item(UNKNOWN_CURSOR, names)]
        return cursor, [reset_item(HISTORY_TRIMMED, trimmed)] if trimmed else []

    async def _trimmed(self, names: Sequence[str], cursor: int) -> tuple[int, list[str]]:
        """The current id and the topics that may have lost an event with id > ``cursor`` (trimmed by
        MAXLEN or expired), in one round trip.

        Trimming removes the oldest entries; if the oldest kept entry is at or just after the cursor, or
        nothing was ever removed, nothing after the cursor is missing. (Redis 7.0 does not update
        ``max-deleted-entry-id`` when trimming, so it cannot be used.)
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._seq_key)
            pipe.hmget(self._topics_key, list(names))
            for name in names:
                pipe.xinfo_stream(self._stream(name))
            results = await pipe.execute(raise_on_error=False)
        for result in results[:2]:
            if isinstance(result, Exception):
                raise result
        out = []
        for name, last, info in zip(names, results[1], results[2:], strict=True):
            if isinstance(info, Exception):
                if last is not None and int(last) > cursor:
                    out.append(name)
                continue
            first = int(info["first-entry"][0].split(b"-", 1)[0]) if info.get("first-entry") else 0
            removed = info.get("entries-added", info["length"]) > info["length"]
            if removed and first > cursor + 1:
                out.append(name)
        return int(results[0] or 0), out

    async def _replay(self, names: Sequence[str], after: int) -> AsyncIterator[list[Item]]:
        try:
            async for page in self._pages(names, after):
                yield [item for item, _ in page]
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def _pages(self, names: Sequence[str], after: int) -> AsyncIterator[list[tuple[Item, list[str]]]]:
        """Items with ids > ``after`` of ``names``' streams, merged in id order, in pages, each once."""
        cursors = dict.fromkeys(names, after)
        buffers: dict[str, list[tuple[Item, list[str]]]] = {name: [] for name in names}
        open_topics = set(names)
        last = after
        while True:
            need = [name for name in open_topics if not buffers[name]]
            if need:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for name in need:
                        pipe.xrange(self._stream(name), min=f"({cursors[name]}-0", max="+", count=REPLAY_PAGE)
                    results = await pipe.execute()
                for name, entries in zip(need, results, strict=True):
                    buffers[name].extend(_entry_items(entries))
                    if entries:
                        cursors[name] = int(entries[-1][0].split(b"-", 1)[0])
                    if len(entries) < REPLAY_PAGE:
                        open_topics.discard(name)
            bound = min((cursors[name] for name in open_topics), default=None)
            merged: dict[int, tuple[Item, list[str]]] = {}
            for name in names:
                buffer = buffers[name]
                cut = len(buffer) if bound is None else _count_upto(buffer, bound)
                for pair in buffer[:cut]:
                    if pair[0].seq > last:
                        merged.setdefault(pair[0].seq, pair)
                del buffer[:cut]
            if merged:
                page = [merged[seq] for seq in sorted(merged)]
                last = page[-1][0].seq
                yield page
            if not open_topics and not any(buffers.values()):
                return

    async def run_reader(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The one pub/sub reader of this process: reconnects with backoff and recovers missed events."""
        task_status.started()
        delay = 0.0
        while True:
            if delay:
                await anyio.sleep(delay)
            try:
                await self._listen()
            except Exception as exc:  # the reader must outlive anything: Redis errors and our own bugs alike
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("event hub reader failed; restarting it")
                if self._listening:
                    self._went_down()
                    log.warning("event hub lost its Redis pub/sub connection (%s); reconnecting", exc)
                    self._counters["reconnects"] += 1
                    delay = 0.0
                    continue
                if self.fanout.subscribers:
                    ended = self.fanout.end_all(HUB_UNAVAILABLE)
                    log.warning("event hub: Redis unavailable (%s); ended %d subscriptions", exc, ended)
                if delay == 0.0:
                    self._counters["outages"] += 1
                delay = min(max(delay * 2, BACKOFF_MIN), BACKOFF_MAX)

    def _went_down(self) -> None:
        self._listening = False
        self._up = anyio.Event()

    async def _listen(self) -> None:
        pubsub = self._sub_redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=SUBSCRIBE_WAIT)
                if message is None:
                    raise ConnectionError("no SUBSCRIBE confirmation from Redis")
                if message["type"] == "subscribe":
                    break
            await self._recover()
            self._listening = True
            self._up.set()
            await pump_messages(pubsub, self._on_message)
        finally:
            with anyio.move_on_after(1, shield=True):
                await pubsub.aclose()

    def _on_message(self, data: bytes) -> None:
        head, _, raw = data.partition(b"\n")
        parts = head.decode(errors="replace").split(" ")
        if len(parts) < 3 or not parts[0].isdecimal():
            log.warning("event hub: ignoring a malformed message on %s: %r", self._channel, data[:80])
            return
        seq = int(parts[0])
        if self._last_seen is None or seq > self._last_seen:
            self._last_seen = seq
        self.fanout.dispatch(Item(seq, parts[1], raw), parts[2:])

    async def _recover(self) -> None:
        """After (re)subscribing: deliver from the streams what pub/sub missed since the last seen id."""
        seq_now = int(await self.redis.get(self._seq_key) or 0)
        last = self._last_seen
        if last is None or seq_now < last:
            if last is not None:
                ended = self.fanout.end_all(HUB_UNAVAILABLE)
                log.warning("event hub: Redis lost its data (id %d < %d); ended %d subscriptions", seq_now, last, ended)
            self._last_seen = seq_now
            return
        topics = list(self.fanout.routes)
        if not topics or seq_now == last:
            return
        _, trimmed = await self._trimmed(topics, last)
        if trimmed:
            self.fanout.end_all(HISTORY_TRIMMED, trimmed)
        async for page in self._pages(topics, last):
            for item, item_topics in page:
                self.fanout.dispatch(item, item_topics)
                self._last_seen = max(self._last_seen or 0, item.seq)
                self._counters["recovered"] += 1

    async def aclose(self) -> None:
        """Close both Redis clients."""
        await self.redis.aclose()
        await self._sub_redis.aclose()


def _count_upto(buffer: list[tuple[Item, list[str]]], bound: int) -> int:
    n = 0
    for item, _ in buffer:
        if item.seq > bound:
            break
        n += 1
    return n


@asynccontextmanager
async def open_redis_hub(
    settings: Settings, tasks: TaskGroup, *, buffer: int = SUBSCRIBER_BUFFER
) -> AsyncIterator[RedisHub]:
    """Start the reader and heartbeats in ``tasks``; wait briefly for the first pub/sub connection.

    The hub is usable even when Redis is down at start: publish/subscribe raise ``ServiceUnavailable``
    until the reader connects.
    """
    hub = RedisHub(settings, buffer)
    try:
        await tasks.start(hub.run_reader)
        tasks.start_soon(hub.fanout.heartbeats, settings.sse_heartbeat)
        if not await hub.wait_listening(FIRST_CONNECT_WAIT):
            log.warning(
                "event hub: Redis at %s is not answering yet; retrying in the background",
                settings.redis_url.rsplit("@", 1)[-1],
            )
        yield hub
    finally:
        hub.fanout.close_all()
        tasks.cancel_scope.cancel()
        with anyio.move_on_after(2, shield=True):
            await hub.aclose()
