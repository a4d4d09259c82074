"""WebSockets through the relay against the programmable upstream: frames both ways, close codes in both
directions, subprotocols and query, pings, either side vanishing, 200 at once, origin checks.

Every test runs twice: with the sockets spliced after the handshake (``SpliceProtocol``, as ``codehub serve``
runs) and with the relay passing messages (any other ASGI server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.databases import fresh_database
from tests.support.relay import RelayHub, start_relay_hub, upstream_process

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module", params=["splice", "frames"])
def mode_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A WebSocket mode and a fresh database for its hub."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("wsdb")) as url:
        yield request.param, url


@pytest.fixture(scope="module")
async def relay_hub(mode_db: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RelayHub]:
    """The relay hub in both WebSocket modes."""
    mode, url = mode_db
    async with start_relay_hub(url, tmp_path_factory.mktemp("data"), mode) as hub:
        yield hub


def abnormal(closed: ConnectionClosed, hub: RelayHub) -> None:
    """How a vanished IDE looks to the browser: close 1014 from the relay, or (spliced) the TCP drop itself."""
    if hub.mode == "frames":
        assert closed.rcvd is not None and closed.rcvd.code == 1014
    else:
        assert closed.rcvd is None


@pytest.fixture(scope="module")
async def ws_id(relay_hub: RelayHub, upstream: str) -> str:
    """Alice's workspace, running at the upstream."""
    return await relay_hub.workspace(relay_hub.alice, "ws-main", upstream)


def open_ws(hub: RelayHub, path: str, token: str | None = None, **kwargs):  # type: ignore[no-untyped-def]
    """A WebSocket to the hub with a Bearer token (default alice's) and the hub's own Origin."""
    headers = {"Authorization": f"Bearer {token or hub.alice}"} if token != "" else {}
    headers.update(kwargs.pop("headers", {}))
    kwargs.setdefault("origin", hub.url)
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("open_timeout", 10)
    return connect(hub.ws_url + path, additional_headers=headers, compression=None, **kwargs)


async def upstream_closes(upstream: str, path: str, timeout: float = 5) -> dict:
    """The close the upstream received on ``path`` (waits for it)."""
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(timeout):
            while True:
                closes = (await client.get(f"http://{upstream}/stats")).json()["ws_closes"]
                found = [c for c in closes if c["path"] == path]
                if found:
                    return found[-1]
                await anyio.sleep(0.05)


async def wait_no_open(hub: RelayHub, ws_id: str) -> None:
    """The relay's open-WebSocket counter for ``ws_id`` drops to 0."""
    with anyio.fail_after(10):
        while hub.relay.stats.of(ws_id).websockets_open:
            await anyio.sleep(0.02)


async def test_text_and_binary_both_ways_at_once(relay_hub: RelayHub, ws_id: str) -> None:
    with anyio.fail_after(60):  # a stuck relay fails here, with a traceback, instead of hanging the run
        async with open_ws(relay_hub, f"/w/{ws_id}/echo") as ws:
            received: list[str | bytes] = []

            async def reader(conn: ClientConnection) -> None:
                for _ in range(400):
                    received.append(await conn.recv())

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader, ws)
                for i in range(200):
                    await ws.send(f"text {i} ü")
                    await ws.send(bytes([i % 256]) * (i * 37 + 1))
            assert received[0::2] == [f"text {i} ü" for i in range(200)]
            assert received[1::2] == [bytes([i % 256]) * (i * 37 + 1) for i in range(200)]
            big = bytes(range(256)) * 8192  # 2 MiB, several reads on each leg
            await ws.send(big)
            assert await ws.recv() == big
        await wait_no_open(relay_hub, ws_id)
        counters = relay_hub.relay.stats.of(ws_id)
        assert counters.bytes_up > 2_000_000 and counters.bytes_down > 2_000_000
        async with relay_hub.client(relay_hub.alice) as client:  # WebSocket traffic counts as activity
            with anyio.fail_after(10):
                while (await client.get(f"/api/workspaces/{ws_id}")).json()["last_activity_source"] != "relay":
                    await anyio.sleep(0.1)


async def test_ide_close_code_reaches_browser(relay_hub: RelayHub, ws_id: str) -> None:
    async with open_ws(relay_hub, f"/w/{ws_id}/closing") as ws:
        await ws.send("close:4001:see you")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "see you")
    await wait_no_open(relay_hub, ws_id)
    key = "ide:4001" if relay_hub.mode == "frames" else "spliced:0"
    assert relay_hub.relay.stats.of(ws_id).close_codes.get(key, 0) >= 1


async def test_browser_close_code_reaches_ide(relay_hub: RelayHub, ws_id: str, upstream: str) -> None:
    path = f"/browser-close-{relay_hub.mode}"
    async with open_ws(relay_hub, f"/w/{ws_id}{path}") as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(4002, "tab closed")
    close = await upstream_closes(upstream, path)
    assert (close["code"], close["reason"]) == (4002, "tab closed")
    await wait_no_open(relay_hub, ws_id)


async def test_subprotocol_query_and_headers_forwarded(relay_hub: RelayHub, ws_id: str) -> None:
    path = f"/w/{ws_id}/stable-1/?reconnectionToken=abc&reconnection=false&skipWebSocketFrames=false"
    headers = {"Cookie": "codehub_session=nope; other=1"}
    async with open_ws(relay_hub, path, subprotocols=["vscode-remote", "v2"], headers=headers) as ws:
        assert ws.subprotocol == "vscode-remote"
        await ws.send("hello")
        seen = json.loads(await ws.recv())
    names = {k: v for k, v in seen["headers"]}
    assert seen["path"] == "/stable-1/" and seen["subprotocols"] == ["vscode-remote", "v2"]
    assert seen["query"] == "reconnectionToken=abc&reconnection=false&skipWebSocketFrames=false"
    assert names["host"] == relay_hub.url.removeprefix("http://") and names["origin"] == relay_hub.url
    assert names["cookie"] == "other=1" and "authorization" not in names
    assert names["x-forwarded-prefix"] == f"/w/{ws_id}"


async def test_pings_answered(relay_hub: RelayHub, ws_id: str) -> None:
    async with open_ws(relay_hub, f"/w/{ws_id}/ping") as ws:
        with anyio.fail_after(5):
            latency = await (await ws.ping(b"are you there"))
        assert latency >= 0


async def test_ide_vanishing_closes_browser_promptly(relay_hub: RelayHub, ws_id: str) -> None:
    async with open_ws(relay_hub, f"/w/{ws_id}/crash") as ws:
        await ws.send("crash")
        with anyio.fail_after(5), pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    abnormal(info.value, relay_hub)
    await wait_no_open(relay_hub, ws_id)


async def test_ide_process_killed_mid_stream(relay_hub: RelayHub) -> None:
    with upstream_process() as (proc, address):
        ws_id = await relay_hub.workspace(relay_hub.alice, "ws-killed", address)
        async with open_ws(relay_hub, f"/w/{ws_id}/x") as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            proc.kill()
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        abnormal(info.value, relay_hub)
        await wait_no_open(relay_hub, ws_id)


async def test_browser_vanishing_closes_ide_promptly(relay_hub: RelayHub, ws_id: str, upstream: str) -> None:
    ws = await open_ws(relay_hub, f"/w/{ws_id}/vanish-{relay_hub.mode}")
    await ws.send("x")
    assert await ws.recv() == "x"
    ws.transport.abort()  # no close frame: the TCP connection just drops
    close = await upstream_closes(upstream, f"/vanish-{relay_hub.mode}")
    assert close["code"] == (1001 if relay_hub.mode == "frames" else 1005)  # spliced: the IDE sees the drop
    await wait_no_open(relay_hub, ws_id)


async def test_200_concurrent_websockets(relay_hub: RelayHub, ws_id: str) -> None:
    opened = anyio.Event()
    count = 0

    async def one(i: int) -> None:
        nonlocal count
        async with open_ws(relay_hub, f"/w/{ws_id}/many/{i}", open_timeout=30) as ws:
            count += 1
            if count == 200:
                opened.set()
            await opened.wait()
            for j in range(5):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
            await opened.wait()
            assert relay_hub.relay.stats.of(ws_id).websockets_open >= 200
    await wait_no_open(relay_hub, ws_id)
    assert relay_hub.relay.stats.open_websockets == 0


async def test_cross_site_websocket_hijacking_refused(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client("") as anon:
        login = await anon.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
    cookie = {"Cookie": f"codehub_session={login.json()['token']}"}
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(relay_hub, f"/w/{ws_id}/x", token="", headers=cookie, origin="https://evil.example"):
            pass
    assert info.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(relay_hub, f"/w/{ws_id}/x", token="", headers=cookie, origin="null"):
            pass
    assert info.value.response.status_code == 403
    async with open_ws(relay_hub, f"/w/{ws_id}/x", token="", headers=cookie) as ws:  # the hub's own origin
        await ws.send("ok")
        assert await ws.recv() == "ok"
    assert relay_hub.relay.stats.of(ws_id).failed_upgrades >= 2


async def test_refusals_before_upgrade(relay_hub: RelayHub, ws_id: str) -> None:
    stopped = await relay_hub.workspace(relay_hub.alice, "ws-stopped", None, state="stopped")
    cases = [
        (f"/w/{ws_id}/x", "", 401),
        (f"/w/{ws_id}/x", relay_hub.bob, 404),
        ("/w/nosuchworkspace/x", None, 404),
        (f"/w/{stopped}/x", None, 503),
    ]
    for path, token, status in cases:
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(relay_hub, path, token=token):
                pass
        assert info.value.response.status_code == status, path
    with pytest.raises(InvalidStatus) as info:  # path mode: an admin does not open someone else's IDE
        async with open_ws(relay_hub, f"/w/{ws_id}/admin", token=relay_hub.admin_token):
            pass
    assert info.value.response.status_code == 403
