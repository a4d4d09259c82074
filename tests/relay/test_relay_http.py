"""HTTP through the relay against the programmable upstream (its own process): forwarding, rewriting,
streaming of large bodies, slow and crashing upstreams, client disconnects, 502s."""

from __future__ import annotations

import hashlib
import os
import resource
import secrets

import anyio
import httpx
import pytest

from tests.support.promtext import sample_value
from tests.support.relay import RelayHub, upstream_process
from tests.support.server import free_port

pytestmark = pytest.mark.anyio

MB = 1024 * 1024


@pytest.fixture(scope="module")
async def ws_id(relay_hub: RelayHub, upstream: str) -> str:
    """Alice's workspace, running at the upstream."""
    return await relay_hub.workspace(relay_hub.alice, "http-main", upstream)


def _headers(body: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        out.setdefault(name, []).append(value)
    return out


async def test_forwarded_request(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.post(
            f"/w/{ws_id}/some/path%2Fenc?b=2&a=1",
            content=b"hello",
            headers={
                "Origin": relay_hub.url,
                "Cookie": "theme=dark; codehub_session=secret; x=1",
                "X-Real-IP": "6.6.6.6",
                "Forwarded": "for=6.6.6.6",
                "X-Forwarded-Prefix": "/spoofed",
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    headers = _headers(body)
    host = relay_hub.url.removeprefix("http://")
    assert body["method"] == "POST" and body["raw_path"] == "/some/path%2Fenc" and body["query"] == "b=2&a=1"
    assert body["body_size"] == 5
    assert headers["host"] == [host] and headers["origin"] == [relay_hub.url]
    assert headers["x-forwarded-host"] == [host] and headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-prefix"] == [f"/w/{ws_id}"] and headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["cookie"] == ["theme=dark; x=1"]
    assert "authorization" not in headers and "x-drop-me" not in headers
    assert "x-real-ip" not in headers and "forwarded" not in headers


async def test_redirects_to_trailing_slash_keeping_query(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.get(f"/w/{ws_id}", params={"folder": "/home/coder/project"})
        assert r.status_code == 302
        assert r.headers["location"] == f"/w/{ws_id}/?folder=%2Fhome%2Fcoder%2Fproject"
        r = await client.post(f"/w/{ws_id}")
        assert r.status_code == 308 and r.headers["location"] == f"/w/{ws_id}/"


async def test_location_and_cookies_stay_under_the_prefix(relay_hub: RelayHub, ws_id: str, upstream: str) -> None:
    host = relay_hub.url.removeprefix("http://")
    cases = {
        "/login": f"/w/{ws_id}/login",
        "./relative": "./relative",
        f"/w/{ws_id}/already": f"/w/{ws_id}/already",
        f"http://{upstream}/x?y=1": f"http://{host}/w/{ws_id}/x?y=1",
        f"http://{host}/z": f"http://{host}/w/{ws_id}/z",
        "https://elsewhere.example/": "https://elsewhere.example/",
    }
    async with relay_hub.client(relay_hub.alice) as client:
        for given, expected in cases.items():
            r = await client.get(f"/w/{ws_id}/redirect", params={"to": given})
            assert r.status_code == 302 and r.headers["location"] == expected, given
        r = await client.get(f"/w/{ws_id}/cookie")
    cookies = r.headers.get_list("set-cookie")
    assert cookies == [f"a=1; Path=/w/{ws_id}/; HttpOnly", f"b=2; Path=/w/{ws_id}/static", "c=3"]


async def test_head_204_304(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.head(f"/w/{ws_id}/download", params={"size": 5000})
        assert r.status_code == 200 and r.headers["content-length"] == "5000" and r.content == b""
        for status in (204, 304):
            r = await client.get(f"/w/{ws_id}/status/{status}")
            assert r.status_code == status and r.headers["x-status"] == str(status)
        r = await client.get(f"/w/{ws_id}/healthz")
        assert r.text == "ok"


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_50mb_up_and_down_streamed(relay_hub: RelayHub, ws_id: str) -> None:
    size = 50 * MB
    block = secrets.token_bytes(MB)
    expected = hashlib.sha256(block * 50).hexdigest()
    before = _rss_mb()
    peak = before

    async def chunks():
        nonlocal peak
        for _ in range(50):
            yield block
            peak = max(peak, _rss_mb())

    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.post(f"/w/{ws_id}/upload", content=chunks(), headers={"Content-Length": str(size)})
        assert r.status_code == 200, r.text
        assert r.json()["size"] == size and r.json()["sha256"] == expected
        r = await client.post(f"/w/{ws_id}/upload", content=chunks())  # no length: chunked both ways
        assert r.json()["size"] == size and r.json()["sha256"] == expected
        for chunked in ("", "1"):
            digest, got = hashlib.sha256(), 0
            reference = hashlib.sha256((bytes(range(256)) * 256) * 800).hexdigest()
            async with client.stream("GET", f"/w/{ws_id}/download", params={"size": size, "chunked": chunked}) as r:
                assert r.status_code == 200
                async for piece in r.aiter_raw():
                    digest.update(piece)
                    got += len(piece)
                    peak = max(peak, _rss_mb())
            assert got == size and digest.hexdigest() == reference
    # hub and client share this process: a buffering relay would add 50+ MB
    assert peak - before < 40, f"RSS grew {peak - before:.0f} MB while relaying 50 MB"
    assert relay_hub.relay.stats.of(ws_id).http_in_flight == 0


async def test_slow_upstream_and_trickled_body(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.get(f"/w/{ws_id}/slow", params={"delay": 1.5})
        assert r.status_code == 200 and r.json() == {"slow": True}
        seen = []
        async with client.stream("GET", f"/w/{ws_id}/trickle", params={"parts": 4, "delay": 0.3}) as r:
            async for line in r.aiter_lines():
                seen.append((line, anyio.current_time()))
        assert [line for line, _ in seen] == ["part0", "part1", "part2", "part3"]
        assert seen[-1][1] - seen[0][1] > 0.6  # parts arrived as they were written, not all at the end


async def test_upstream_crash_mid_stream(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", f"/w/{ws_id}/crash", params={"after": 200_000}) as r:
                assert r.status_code == 200
                async for _ in r.aiter_raw():
                    pass
        r = await client.get(f"/w/{ws_id}/healthz")  # the relay itself is fine
        assert r.status_code == 200
    assert relay_hub.relay.stats.of(ws_id).upstream_errors >= 1


async def test_client_disconnect_mid_download(relay_hub: RelayHub, ws_id: str, upstream: str) -> None:
    async with httpx.AsyncClient() as direct:
        before = (await direct.get(f"http://{upstream}/stats")).json()["aborted_downloads"]
    async with (
        relay_hub.client(relay_hub.alice) as client,
        client.stream("GET", f"/w/{ws_id}/download", params={"size": 500 * MB}) as r,
    ):
        got = 0
        async for piece in r.aiter_raw():
            got += len(piece)
            if got > 2 * MB:
                break
    async with httpx.AsyncClient() as direct:
        with anyio.fail_after(10):
            while (await direct.get(f"http://{upstream}/stats")).json()["aborted_downloads"] == before:
                await anyio.sleep(0.05)
    with anyio.fail_after(5):
        while relay_hub.relay.stats.of(ws_id).http_in_flight:
            await anyio.sleep(0.05)


async def test_client_disconnect_mid_upload(relay_hub: RelayHub, ws_id: str) -> None:
    class Stop(Exception):
        pass

    async def chunks():
        for i in range(200):
            if i == 5:
                raise Stop
            yield b"x" * MB

    async with relay_hub.client(relay_hub.alice) as client:
        with pytest.raises(Stop):
            await client.post(f"/w/{ws_id}/upload", content=chunks(), headers={"Content-Length": str(200 * MB)})
        with anyio.fail_after(5):
            while relay_hub.relay.stats.of(ws_id).http_in_flight:
                await anyio.sleep(0.05)
        assert (await client.get(f"/w/{ws_id}/healthz")).text == "ok"


async def test_early_answer_stops_the_upload(relay_hub: RelayHub, ws_id: str) -> None:
    """An IDE that refuses a body before reading it: the client gets the answer, the upload stops."""
    counters = relay_hub.relay.stats.of(ws_id)
    before = counters.bytes_up

    async def chunks():
        for _ in range(200):
            yield b"x" * MB

    async with relay_hub.client(relay_hub.alice) as client:
        with anyio.fail_after(30):
            try:
                r = await client.post(f"/w/{ws_id}/early", content=chunks(), headers={"Content-Length": str(200 * MB)})
                assert r.status_code == 413 and r.json() == {"error": "too big"}
            except (httpx.WriteError, httpx.RemoteProtocolError):
                pass  # the client may notice the closed upload before it reads the answer
        assert counters.bytes_up - before < 100 * MB  # the relay stopped forwarding the body
        with anyio.fail_after(5):
            while relay_hub.relay.stats.of(ws_id).http_in_flight:
                await anyio.sleep(0.05)
        assert (await client.get(f"/w/{ws_id}/healthz")).text == "ok"


async def test_upstream_down_is_a_502_page(relay_hub: RelayHub) -> None:
    dead = await relay_hub.workspace(relay_hub.alice, "http-dead", f"127.0.0.1:{free_port()}")
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.get(f"/w/{dead}/")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    assert "not answering" in r.text and "Traceback" not in r.text


async def test_upstream_restart_behind_pooled_connections(relay_hub: RelayHub) -> None:
    """Keep-alive connections to an IDE that restarted are stale: the relay retries on a fresh one."""
    with upstream_process() as (proc, address):
        ws = await relay_hub.workspace(relay_hub.alice, "http-restart", address)
        async with relay_hub.client(relay_hub.alice) as client:
            for _ in range(5):
                assert (await client.get(f"/w/{ws}/healthz")).status_code == 200
            proc.kill()
            proc.wait()
            assert (await client.get(f"/w/{ws}/healthz")).status_code == 502


async def test_interim_answer_in_the_same_read_as_the_final_one(relay_hub: RelayHub) -> None:
    """An IDE sending ``103 Early Hints`` and its ``200`` in one write: the client gets the ``200`` only."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            await stream.send(
                b"HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
            )
            await anyio.sleep(1)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        ws = await relay_hub.workspace(relay_hub.alice, "http-hints", f"127.0.0.1:{port}")
        async with relay_hub.client(relay_hub.alice) as client:
            r = await client.get(f"/w/{ws}/page")
        tg.cancel_scope.cancel()
    assert (r.status_code, r.text) == (200, "hello") and "link" not in r.headers


async def test_relay_metrics_are_per_server_never_per_workspace(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        assert (await client.get(f"/w/{ws_id}/healthz")).status_code == 200
        relay_hub.relay.stats.sync()  # the background copy runs every 5 s
        text = (await client.get("/metrics")).text
    relay_lines = [line for line in text.splitlines() if line.startswith("codehub_relay_")]
    assert relay_lines and not any(ws_id in line for line in relay_lines)
    assert (sample_value(text, "codehub_relay_bytes_total", server="hub", direction="down") or 0) > 0
    assert sample_value(text, "codehub_relay_connections", server="hub") is not None
