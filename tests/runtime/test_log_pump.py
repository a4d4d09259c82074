"""Log pumps: workspace output on ``workspace:<id>:logs`` as ``log.line`` events, each line once.

Lines are read back over a real server (``GET /api/events?topic=…``) and compared with the runtime's own
log (``GET …/logs``): same lines, same order, none twice — after a pump restart, with two hubs on one
Redis, and after the hub holding the pump goes away.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.factory import create_app
from app.models import Workspace, WorkspaceState
from app.services.runtime.base import LogLine
from app.services.workspaces.log_pump import RETRY_FIRST, LogPumps, ResumePoint, batch_data
from tests.support.event_hubs import delete_prefix
from tests.support.lifecycle import create, wait_state
from tests.support.runtime import fake_ide_command, remove_hub_containers
from tests.support.server import admin_token, serve_asgi
from tests.support.services import need_redis
from tests.support.settings import docker_settings, make_settings
from tests.support.sse_client import open_sse

pytestmark = pytest.mark.anyio


class TopicLines:
    """Every line published on a workspace's logs topic, read from the start of history."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.events = 0

    async def run(self, client: httpx.AsyncClient, workspace_id: str) -> None:
        """Collect until cancelled."""
        params = {"topic": f"workspace:{workspace_id}:logs", "since": "earliest"}
        async with open_sse(client, "/api/events", params=params, timeout=None) as stream:
            while True:
                frame = await stream.next(timeout=3600)
                if frame.event == "log.line":
                    data = frame.data["data"]
                    self.events += 1
                    for line in data.get("lines") or [data]:
                        self.lines.append((line["at"], line["text"]))


async def runtime_lines(client: httpx.AsyncClient, workspace_id: str) -> list[tuple[str, str]]:
    """The runtime's log of the workspace (``GET …/logs``)."""
    r = await client.get(f"/api/workspaces/{workspace_id}/logs", params={"tail": 10_000})
    r.raise_for_status()
    return [(line["at"], line["text"]) for line in r.json()["lines"]]


async def caught_up(client: httpx.AsyncClient, workspace_id: str, topic: TopicLines, timeout: float = 30) -> None:
    """Wait until the topic carries exactly the runtime's lines (each once, in order)."""
    expected: list[tuple[str, str]] = []
    with anyio.move_on_after(timeout):
        while True:
            expected = await runtime_lines(client, workspace_id)
            if topic.lines == expected:
                return
            await anyio.sleep(0.2)
    assert len(topic.lines) == len(set(topic.lines)), "a line was published twice"
    assert topic.lines == expected


async def burst(client: httpx.AsyncClient, workspace_id: str, pid: str, tag: str, n: int = 200) -> None:
    """Make the IDE process print ``n`` lines at once (written to its stdout from an exec)."""
    script = f"for i in $(seq 1 {n}); do echo {tag}-$i; done > /proc/{pid}/fd/1"
    r = await client.post(f"/api/workspaces/{workspace_id}/execute", json={"command": ["sh", "-c", script]})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text


def pumps_of(app: Any) -> LogPumps:
    """The log pumps of a running app."""
    return app.state.ctx.log_pumps


async def wait_for(check: Any, timeout: float = 20) -> None:
    """Poll ``check()`` until it is true."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.05)


@asynccontextmanager
async def clients(settings: Any, count: int = 1) -> AsyncIterator[tuple[list[Any], list[httpx.AsyncClient]]]:
    """``count`` hub processes (apps on real servers) on the same settings, with an admin client each."""
    token = await admin_token(settings)
    apps = [create_app(settings) for _ in range(count)]
    async with AsyncExitStack() as stack:
        out = []
        for app in apps:
            url = await stack.enter_async_context(serve_asgi(app))
            client = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            out.append(await stack.enter_async_context(client))
        yield apps, out


def local_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Any:
    """A hub running the fake IDE as a local process, sweeping fast."""
    return make_settings(
        tmp_path / "data",
        database_url=database_url,
        runtime="local",
        local_ide_command=fake_ide_command(),
        start_timeout=20,
        reconcile_interval=0.3,
        **overrides,
    )


async def test_local_lines_reach_the_topic_once_across_a_pump_restart(tmp_path: Path, sqlite_url: str) -> None:
    async with clients(local_settings(tmp_path, sqlite_url)) as (apps, [client]), anyio.create_task_group() as tg:
        ws = await create(client, "pumped")
        await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        pid = (await client.get(f"/api/workspaces/{ws['id']}/status")).json()["container_id"]
        topic = TopicLines()
        tg.start_soon(topic.run, client, ws["id"])
        await wait_for(lambda: any("fake-ide listening" in text for _, text in topic.lines))
        await burst(client, ws["id"], pid, "one")
        await caught_up(client, ws["id"], topic)

        pumps = pumps_of(apps[0])
        old = pumps.pumps[ws["id"]]
        pumps.stop(ws["id"], grace=0)
        await wait_for(lambda: pumps.pumps.get(ws["id"]) is not old)
        await burst(client, ws["id"], pid, "two")  # the sweep starts a new pump, which resumes after the last line
        await caught_up(client, ws["id"], topic)
        assert sum(text.startswith("two-") for _, text in topic.lines) == 200

        await client.post(f"/api/workspaces/{ws['id']}/stop")
        await wait_for(lambda: ws["id"] not in pumps.pumps)
        await caught_up(client, ws["id"], topic)
        assert any("terminated" in text for _, text in topic.lines)
        tg.cancel_scope.cancel()


@pytest.fixture
async def redis() -> AsyncIterator[dict[str, str]]:
    """Settings for the test Redis under a key prefix of the test's own, deleted at the end."""
    values = {"redis_url": need_redis(), "redis_prefix": f"codehub-test-lp-{secrets.token_hex(4)}"}
    yield values
    await delete_prefix(values["redis_url"], values["redis_prefix"])


async def test_two_hubs_on_one_redis_publish_each_line_once(
    tmp_path: Path, postgres_url: str, redis: dict[str, str]
) -> None:
    settings = local_settings(tmp_path, postgres_url, **redis)
    async with clients(settings, 2) as (apps, [a, b]), anyio.create_task_group() as tg:
        ws = await create(a, "shared")
        await a.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        pid = (await a.get(f"/api/workspaces/{ws['id']}/status")).json()["container_id"]
        topic = TopicLines()
        tg.start_soon(topic.run, b, ws["id"])
        for i in range(3):  # through the hub that runs the local process (the other one cannot exec in it)
            await burst(a, ws["id"], pid, f"b{i}", 100)
            await a.get(f"/api/workspaces/{ws['id']}/status")  # the IDE logs the health probe
        await caught_up(a, ws["id"], topic)
        holders = [app for app in apps if ws["id"] in pumps_of(app).pumps]
        assert len(holders) == 1
        ctx = apps[0].state.ctx
        token = await ctx.redis.get(pumps_of(apps[0]).lease_key(ws["id"]))
        assert token.decode() == pumps_of(holders[0]).pumps[ws["id"]].token
        await a.delete(f"/api/workspaces/{ws['id']}")
        await wait_for(lambda: not any(ws["id"] in pumps_of(app).pumps for app in apps))
        assert await ctx.redis.get(pumps_of(apps[0]).lease_key(ws["id"])) is None
        tg.cancel_scope.cancel()


async def test_docker_pump_moves_to_the_other_hub_without_repeating_lines(
    tmp_path: Path, sqlite_url: str, redis: dict[str, str]
) -> None:
    settings = docker_settings(tmp_path / "data", sqlite_url, hub_id=f"t-lp-{secrets.token_hex(4)}", **redis)
    try:
        await _docker_takeover(settings)
    finally:
        remove_hub_containers(settings.hub_id)


async def _docker_takeover(settings: Any) -> None:
    token = await admin_token(settings)
    headers = {"Authorization": f"Bearer {token}"}
    first, second = create_app(settings), create_app(settings)
    async with (
        serve_asgi(second) as url_b,
        httpx.AsyncClient(base_url=url_b, headers=headers, timeout=30) as b,
        anyio.create_task_group() as tg,
    ):
        topic = TopicLines()
        async with serve_asgi(first) as url_a, httpx.AsyncClient(base_url=url_a, headers=headers) as a:
            ws = await create(a, "moving")
            await a.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"}, timeout=60)
            await wait_state(a, ws["id"], {"running"})
            tg.start_soon(topic.run, b, ws["id"])
            await wait_for(lambda: any("wsecho" in text for _, text in topic.lines))
            await burst(a, ws["id"], "1", "before")
            await caught_up(a, ws["id"], topic)
            # The first hub takes the pump (it saw the transition); the second only sweeps.
            await wait_for(lambda: ws["id"] in pumps_of(first).pumps or ws["id"] in pumps_of(second).pumps)
            if ws["id"] in pumps_of(second).pumps:
                pytest.skip("the second hub's sweep took the pump first (no takeover to test)")
        # The first hub is gone (its pump released the lease on the way out): the second takes over.
        await wait_for(lambda: ws["id"] in pumps_of(second).pumps)
        await burst(b, ws["id"], "1", "after")
        await caught_up(b, ws["id"], topic)
        texts = [text for _, text in topic.lines]
        assert texts.count("before-1") == texts.count("after-200") == 1
        await b.delete(f"/api/workspaces/{ws['id']}")
        tg.cancel_scope.cancel()


def test_resume_point_skips_only_what_history_holds_even_within_one_microsecond() -> None:
    t1, t2, t3 = "2026-01-01T00:00:00.000001Z", "2026-01-01T00:00:00.000002Z", "2026-01-01T00:00:00.000003Z"
    held = batch_data([LogLine(t1, "a"), LogLine(t2, "b"), LogLine(t2, "c")])  # the last event in history
    resume = ResumePoint(held)
    replayed = [LogLine(t1, "a"), LogLine(t2, "b"), LogLine(t2, "c"), LogLine(t2, "d"), LogLine(t3, "e")]
    assert [line.text for line in replayed if resume.fresh(line)] == ["d", "e"]
    # past the cursor nothing is filtered: a live stream printing faster than the clock ticks keeps every line
    assert resume.fresh(LogLine(t1, "late clock")) and resume.fresh(LogLine(t3, "e"))
    nothing = ResumePoint(None)
    assert nothing.at is None and nothing.fresh(LogLine(t1, "a"))
    single = ResumePoint(batch_data([LogLine(t2, "b")]))
    assert [x.text for x in (LogLine(t2, "b"), LogLine(t2, "b")) if single.fresh(x)] == ["b"]


async def test_a_pump_that_fails_is_tried_again_later_not_every_sweep(tmp_path: Path, sqlite_url: str) -> None:
    settings = local_settings(tmp_path, sqlite_url)  # sweeps every 0.3 s
    async with clients(settings) as ([app], [client]):
        ws = await create(client, "phantom")
        ctx = app.state.ctx
        async with ctx.sessionmaker() as session:  # "running" in the database, no process behind it
            row = await session.get(Workspace, ws["id"])
            assert row is not None
            row.state = WorkspaceState.RUNNING
            await session.commit()
        pumps = pumps_of(app)
        tries = 0
        pump = pumps._pump

        async def counted(workspace_id: str) -> None:
            nonlocal tries
            if workspace_id == ws["id"]:
                tries += 1
            await pump(workspace_id)

        pumps._pump = counted  # type: ignore[method-assign]
        await wait_for(lambda: tries == 1 and ws["id"] not in pumps.pumps)
        await anyio.sleep(2)  # six sweeps
        assert tries == 1 and pumps._retry[ws["id"]][1] == RETRY_FIRST
        pumps.on_lifecycle(row, "workspace.running")  # a new start is tried at once
        await wait_for(lambda: tries == 2)
