"""The hub contract, run on both backends (in-process and real Redis)."""

from __future__ import annotations

import anyio
import pytest

from app.errors import BadRequest
from app.events import Event
from app.streams.events.fanout import PING
from tests.support.event_hubs import HubFactory, rest, take

pytestmark = pytest.mark.anyio


def ids(events: list[Event]) -> list[int]:
    return [int(e.id) for e in events]


async def test_publish_ids_grow_across_topics_and_events_have_the_contract_shape(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        async with hub.subscribe(["workspace:a", "workspace:b"]) as sub:
            first = await hub.publish("workspace:a", "workspace.created", {"name": "a"})
            second = await hub.publish("workspace:b", "workspace.created", {"name": "b"})
            third = await hub.publish("workspace:a", "workspace.starting", {})
            assert int(first) < int(second) < int(third)
            got = await take(sub, 3)
        assert [e.id for e in got] == [first, second, third]
        assert got[0].topic == "workspace:a" and got[0].type == "workspace.created"
        assert got[0].data == {"name": "a"} and got[0].at.endswith("Z")
        assert hub.stats()["subscribers"] == 0


async def test_also_topics_share_one_id_and_a_multi_topic_subscriber_gets_it_once(make_hub: HubFactory) -> None:
    async with (
        make_hub() as hub,
        hub.subscribe(["user:1"]) as user,
        hub.subscribe(["admin"]) as admin,
        hub.subscribe(["workspace:w", "user:1", "admin"]) as everything,
    ):
        event_id = await hub.publish("workspace:w", "workspace.created", {}, also=["user:1", "admin"])
        marker = await hub.publish("admin", "marker", {})
        assert [e.id for e in await take(user, 1)] == [event_id]
        assert [e.id for e in await take(admin, 2)] == [event_id, marker]
        both = await take(everything, 2)
        assert [e.id for e in both] == [event_id, marker]
        assert both[0].topic == "workspace:w"


async def test_replay_after_cursor_then_live_in_order(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        published = []
        for i in range(10):
            published.append(await hub.publish("t:a" if i % 2 else "t:b", "x", {"i": i}))
        await hub.publish("t:other", "x", {})
        async with hub.subscribe(["t:a", "t:b"], last_event_id=published[2]) as sub:
            live = await hub.publish("t:a", "x", {"i": 10})
            got = await take(sub, 8)
        assert [e.id for e in got] == [*published[3:], live]
        assert hub.stats()["replayed"] >= 7


async def test_since_earliest_replays_everything_retained_without_reset(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        published = [await hub.publish("t:a", "x", {"i": i}) for i in range(5)]
        async with hub.subscribe(["t:a"], since_earliest=True) as sub:
            got = await take(sub, 5)
        assert [e.id for e in got] == published


async def test_no_duplicate_and_no_gap_while_subscribing_during_a_publish_storm(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        published: list[int] = []
        done = anyio.Event()

        async def storm() -> None:
            for i in range(400):
                published.append(int(await hub.publish("t:a" if i % 3 else "t:b", "x", {"i": i}, also=["t:all"])))
                if i % 7 == 0:
                    await anyio.sleep(0)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(storm)
            while len(published) < 100:
                await anyio.sleep(0.001)
            cursor = published[50]
            async with hub.subscribe(["t:a", "t:b", "t:all"], last_event_id=str(cursor)) as sub:
                await done.wait()
                expected = [i for i in published if i > cursor]
                got = ids(await take(sub, len(expected), timeout=10))
        assert got == expected


async def test_a_cursor_older_than_history_gets_a_reset_then_what_history_holds(make_hub: HubFactory) -> None:
    async with make_hub(event_history=10) as hub:
        published = [int(await hub.publish("t:a", "x", {"i": i})) for i in range(260)]
        async with hub.subscribe(["t:a"], last_event_id=str(published[0])) as sub:
            first = (await take(sub, 1))[0]
            assert first.type == "stream.reset" and first.id == ""
            assert first.data["reason"] == "history_trimmed" and first.data["topics"] == ["t:a"]
            live = int(await hub.publish("t:a", "x", {}))
            got: list[int] = []
            with anyio.fail_after(5):
                while not got or got[-1] != live:
                    got.extend(ids(await take(sub, 1)))
        assert got == sorted(set(got)) and len(got) >= 10 and got[-2] == published[-1]
        assert got[0] > published[1]


async def test_a_recent_cursor_on_a_trimmed_topic_gets_no_reset(make_hub: HubFactory) -> None:
    async with make_hub(event_history=10) as hub:
        published = [await hub.publish("t:a", "x", {"i": i}) for i in range(260)]
        async with hub.subscribe(["t:a"], last_event_id=published[-3]) as sub:
            got = await take(sub, 2)
        assert [e.id for e in got] == published[-2:]


async def test_a_cursor_from_the_future_or_garbage_gets_a_reset_then_everything(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        published = [await hub.publish("t:a", "x", {"i": i}) for i in range(3)]
        for cursor in ("999999", "not-an-id"):
            async with hub.subscribe(["t:a"], last_event_id=cursor) as sub:
                got = await take(sub, 4)
            assert got[0].type == "stream.reset" and got[0].data["reason"] == "unknown_cursor"
            assert [e.id for e in got[1:]] == published


async def test_a_slow_consumer_is_reset_without_blocking_the_publisher_or_others(make_hub: HubFactory) -> None:
    async with make_hub(buffer=5) as hub:
        async with hub.subscribe(["t:a"]) as slow, hub.subscribe(["t:a"]) as fast:
            got_fast: list[Event] = []
            published = []
            for i in range(20):
                published.append(await hub.publish("t:a", "x", {"i": i}))
                got_fast.extend(await take(fast, 1))
            assert [e.id for e in got_fast] == published
            tail = await rest(slow)
            assert [e.id for e in tail[:-1]] == published[:5]
            assert tail[-1].type == "stream.reset" and tail[-1].data["reason"] == "slow_consumer"
            stats = hub.stats()
            assert stats["dropped"] == 1 and stats["subscribers"] == 1
        assert hub.stats()["subscribers"] == 0


async def test_heartbeats_reach_next_batch_but_not_the_event_iterator(make_hub: HubFactory) -> None:
    async with make_hub(sse_heartbeat=0.05) as hub, hub.subscribe(["t:a"]) as sub:
        with anyio.fail_after(5):
            batch = await sub.next_batch()
        assert batch == [PING]
        await hub.publish("t:a", "x", {})
        with anyio.fail_after(5):
            async for event in sub:
                assert event.type == "x"
                break


async def test_last_event_is_the_newest_of_a_topic(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        assert await hub.last_event("workspace:q:logs") is None
        await hub.publish("workspace:q:logs", "log.line", {"at": "1", "text": "a"})
        newest = await hub.publish("workspace:q", "workspace.updated", {}, also=["workspace:q:logs"])
        await hub.publish("workspace:q", "workspace.updated", {"later": True})
        last = await hub.last_event("workspace:q:logs")
        assert last is not None and last.id == newest and last.topic == "workspace:q"


async def test_bad_topics_and_types_are_refused(make_hub: HubFactory) -> None:
    async with make_hub() as hub:
        with pytest.raises(BadRequest):
            await hub.publish("has space", "x", {})
        with pytest.raises(BadRequest):
            await hub.publish("t:a", "bad\ntype", {})
        with pytest.raises(BadRequest):
            async with hub.subscribe([]):
                pass
        with pytest.raises(BadRequest):
            async with hub.subscribe(["ok", "not ok"]):
                pass
        assert hub.stats()["subscribers"] == 0


async def test_subscriptions_end_cleanly_when_the_hub_closes(make_hub: HubFactory) -> None:
    async with make_hub() as hub, hub.subscribe(["t:a"]) as sub:
        async with anyio.create_task_group() as tg:
            result: list[object] = []

            async def read() -> None:
                result.append(await sub.next_batch())

            tg.start_soon(read)
            await anyio.sleep(0.05)
            hub.fanout.close_all()  # what open_hub does on exit
        assert result == [None]
