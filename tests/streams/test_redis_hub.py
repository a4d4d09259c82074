"""Redis backend: several hub processes on one Redis, pub/sub disconnects, and a real Redis outage."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aredis

from app.errors import ServiceUnavailable
from app.streams.events.backend import open_hub
from app.streams.events.redis_hub import PUBLISH_LUA, RedisHub
from tests.support.event_hubs import private_redis, rest, take
from tests.support.server import free_port
from tests.support.services import REDIS_URL
from tests.support.settings import hub_settings

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def redis_hub(tmp_path: Path, prefix: str, url: str = REDIS_URL, **overrides: Any) -> AsyncIterator[RedisHub]:
    async with open_hub(hub_settings(tmp_path, redis_url=url, redis_prefix=prefix, **overrides)) as hub:
        assert isinstance(hub, RedisHub)
        yield hub


async def test_two_hubs_fan_out_across_processes_and_resume_on_the_other(tmp_path: Path, redis_prefix: str) -> None:
    async with redis_hub(tmp_path, redis_prefix) as one, redis_hub(tmp_path, redis_prefix) as two:
        async with two.subscribe(["workspace:x"]) as remote:
            published = [await one.publish("workspace:x", "log.line", {"i": i}) for i in range(5)]
            assert [e.id for e in await take(remote, 5)] == published
        async with one.subscribe(["workspace:x"], since_earliest=True) as first:
            seen = await take(first, 2)
        async with two.subscribe(["workspace:x"], last_event_id=seen[1].id) as resumed:
            later = await one.publish("workspace:x", "log.line", {"i": 5})
            assert [e.id for e in await take(resumed, 4)] == [*published[2:], later]
        assert one.stats()["subscribers"] == two.stats()["subscribers"] == 0


async def test_events_missed_during_a_pubsub_disconnect_are_recovered_from_the_streams(
    tmp_path: Path, redis_prefix: str
) -> None:
    async with redis_hub(tmp_path, redis_prefix) as reader, redis_hub(tmp_path, redis_prefix) as writer:
        async with reader.subscribe(["t:a", "t:b"]) as sub:
            first = await writer.publish("t:a", "x", {"i": 0})
            assert [e.id for e in await take(sub, 1)] == [first]
            admin = aredis.Redis.from_url(REDIS_URL)
            try:
                clients = await admin.client_list()
                (victim,) = [c["id"] for c in clients if c.get("name") == reader.reader_name]
                # Kill the reader's pub/sub connection and publish in one transaction: the reader cannot
                # have resubscribed in between, so these events can only come back from the streams.
                async with admin.pipeline(transaction=True) as pipe:
                    pipe.execute_command("CLIENT", "KILL", "ID", victim)
                    sha = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()
                    for i in range(1, 4):
                        keys, args = writer.script_call("t:b" if i % 2 else "t:a", "x", {"i": i}, also=["t:c"])
                        pipe.evalsha(sha, len(keys), *keys, *args)
                    results = await pipe.execute()
            finally:
                await admin.aclose()
            missed = [str(n) for n in results[1:]]
            after = await writer.publish("t:a", "x", {"i": 4})
            got = await take(sub, 4)
        assert [e.id for e in got] == [*missed, after]
        stats = reader.stats()
        assert stats["recovered"] >= 3 and stats["reconnects"] >= 1 and stats["up"]


async def wait_up(hub: RedisHub, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                await hub.check()
                return
            except ServiceUnavailable:
                await anyio.sleep(0.1)


async def test_redis_outage_resets_subscribers_fails_publish_and_recovers_by_itself(
    tmp_path: Path, redis_prefix: str
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with private_redis(port) as server:
        async with redis_hub(tmp_path, redis_prefix, url=url) as hub:
            async with hub.subscribe(["t:a"]) as sub:
                before = await hub.publish("t:a", "x", {})
                assert [e.id for e in await take(sub, 1)] == [before]
                server.kill()
                server.wait()
                tail = await rest(sub, timeout=10)
            assert [e.type for e in tail] == ["stream.reset"]
            assert tail[0].data["reason"] == "hub_unavailable"
            with pytest.raises(ServiceUnavailable) as info:
                await hub.publish("t:a", "x", {})
            assert info.value.code == "events_unavailable"
            with pytest.raises(ServiceUnavailable):
                await hub.check()
            with pytest.raises(ServiceUnavailable):
                async with hub.subscribe(["t:a"]):
                    pass
            assert hub.stats()["subscribers"] == 0

            with private_redis(port):
                await wait_up(hub)
                # The private server lost everything: an old cursor is unknown to this incarnation.
                async with hub.subscribe(["t:a"], last_event_id=before) as resumed:
                    again = await hub.publish("t:a", "x", {"after": True})
                    got = await take(resumed, 2)
                assert got[0].type == "stream.reset" and got[0].data["reason"] == "unknown_cursor"
                assert got[1].id == again and got[1].data == {"after": True}
                async with hub.subscribe(["t:a"]) as live:
                    newer = await hub.publish("t:a", "x", {})
                    assert [e.id for e in await take(live, 1)] == [newer]
            assert hub.stats()["outages"] >= 1


async def test_a_hub_started_while_redis_is_down_connects_when_it_comes_up(tmp_path: Path, redis_prefix: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    async with redis_hub(tmp_path, redis_prefix, url=url) as hub:
        with pytest.raises(ServiceUnavailable):
            await hub.publish("t:a", "x", {})
        with private_redis(port):
            await wait_up(hub)
            async with hub.subscribe(["t:a"]) as sub:
                event_id = await hub.publish("t:a", "x", {})
                assert [e.id for e in await take(sub, 1)] == [event_id]


async def test_garbage_on_the_channel_or_in_a_stream_does_not_stop_the_reader(
    tmp_path: Path, redis_prefix: str
) -> None:
    async with redis_hub(tmp_path, redis_prefix) as hub, hub.subscribe(["t:a"]) as sub:
        first = await hub.publish("t:a", "x", {})
        admin = aredis.Redis.from_url(REDIS_URL)
        try:
            await admin.publish(f"{redis_prefix}:events", b"not an event")
            await admin.publish(f"{redis_prefix}:events", b"\xff\xfe")
            await admin.xadd(f"{redis_prefix}:events:t:t:a", {"x": "y"}, id=f"{first}-1")
        finally:
            await admin.aclose()
        second = await hub.publish("t:a", "x", {})
        assert [e.id for e in await take(sub, 2)] == [first, second]
        async with hub.subscribe(["t:a"], since_earliest=True) as replay:
            assert [e.id for e in await take(replay, 2)] == [first, second]
        assert hub.stats()["up"]


async def test_a_lost_counter_does_not_break_publishing(tmp_path: Path, redis_prefix: str) -> None:
    async with redis_hub(tmp_path, redis_prefix) as hub:
        before = [int(await hub.publish("t:a", "x", {})) for _ in range(3)]
        admin = aredis.Redis.from_url(REDIS_URL)
        try:
            await admin.delete(f"{redis_prefix}:events:seq")  # e.g. evicted, or deleted by hand
        finally:
            await admin.aclose()
        after = int(await hub.publish("t:a", "x", {}, also=["t:b"]))
        assert after > before[-1]
        async with hub.subscribe(["t:a"], since_earliest=True) as replay:
            assert [int(e.id) for e in await take(replay, 4)] == [*before, after]
