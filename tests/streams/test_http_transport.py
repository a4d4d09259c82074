"""``LinkTransport`` (httpx on the relay's pool) against real sockets: framing, keep-alive, failures.

The LLM client's own tests run on this transport and on httpx's (``tests/ai/test_llm_client.py``); these
cover what a raw server can do that the fake model server does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from app.streams.net.http_transport import LinkTransport, direct_http

pytestmark = pytest.mark.anyio

Handler = Callable[[SocketStream, BufferedByteReceiveStream, int], Awaitable[None]]


class RawServer:
    """A TCP server whose ``handler(stream, reader, connection_number)`` writes whatever bytes it likes."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.connections = 0
        self.requests: list[bytes] = []


async def read_request(reader: BufferedByteReceiveStream) -> tuple[bytes, bytes]:
    """One request's head and body (content-length or chunked)."""
    head = await reader.receive_until(b"\r\n\r\n", 65536)
    lower = head.lower()
    body = b""
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.receive_exactly(length) if length else b""
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int(await reader.receive_until(b"\r\n", 100), 16)
            chunk = await reader.receive_exactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return head, body


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server = RawServer(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def serve(stream: SocketStream) -> None:
        server.connections += 1
        async with stream:
            with suppress(anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                await handler(stream, BufferedByteReceiveStream(stream), server.connections)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def client(
    timeout: float = 5.0, fallback: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    transport = LinkTransport(fallback=fallback)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        http.link_transport = transport  # type: ignore[attr-defined]
        yield http


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)


async def test_keep_alive_reuses_the_connection_and_chunked_bodies_are_joined_per_read() -> None:
    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"GET /chunks"):
                body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"a", b"bb", b"ccc")) + b"0\r\n\r\n"
                await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body)  # one write
            else:
                await stream.send(ok(b"hello", b"x-conn: %d\r\n" % n))

    async with raw_server(handler) as server, client() as http:
        first = await http.get(server.url + "/")
        second = await http.get(server.url + "/again")
        async with http.stream("GET", server.url + "/chunks") as response:
            pieces = [piece async for piece in response.aiter_raw()]
        stats = http.link_transport.pool.stats()  # type: ignore[attr-defined]
    assert first.text == second.text == "hello" and first.headers["x-conn"] == second.headers["x-conn"] == "1"
    assert pieces == [b"abbccc"]  # three HTTP chunks, one socket read: one piece
    assert server.connections == 1 and stats["upstream_opened"] == 1 and stats["upstream_reused"] == 2


async def test_request_bodies_fixed_and_chunked() -> None:
    seen: list[bytes] = []

    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        while True:
            _, body = await read_request(reader)
            seen.append(body)
            await stream.send(ok(b"%d" % len(body)))

    async def parts() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async with raw_server(handler) as server, client() as http:
        fixed = await http.post(server.url + "/", content=b'{"x": 1}')
        chunked = await http.post(server.url + "/", content=parts())
    assert fixed.text == "8" and chunked.text == "18"
    assert seen == [b'{"x": 1}', b"part one, part two"]


async def test_a_stale_kept_alive_connection_is_retried_once_on_a_new_one() -> None:
    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        await read_request(reader)
        await stream.send(ok(b"conn %d" % n))  # keep-alive promised, then closed: a stale pooled connection

    async with raw_server(handler) as server, client() as http:
        assert (await http.get(server.url + "/")).text == "conn 1"
        await anyio.sleep(0.05)
        assert (await http.post(server.url + "/", content=b"body")).text == "conn 2"
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_answer_is_a_protocol_error() -> None:
    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        await read_request(reader)

    async with raw_server(handler) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.get(server.url + "/")
    assert server.connections == 1


async def test_interim_answers_head_204_and_close_delimited_bodies() -> None:
    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        head, _ = await read_request(reader)
        if head.startswith(b"GET /hints"):
            await stream.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + ok(b"final"))
        elif head.startswith(b"HEAD"):
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        elif head.startswith(b"GET /empty"):
            await stream.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
            return  # closing the connection ends the body
        await anyio.sleep(1)

    async with raw_server(handler) as server, client() as http:
        hints = await http.get(server.url + "/hints")
        head = await http.head(server.url + "/")
        empty = await http.get(server.url + "/empty")
        unframed = await http.get(server.url + "/unframed")
    assert (hints.status_code, hints.text) == (200, "final")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "1234", b"")
    assert (empty.status_code, empty.content) == (204, b"")
    assert unframed.text == "until the end"


async def test_failures_are_httpx_errors() -> None:
    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        head, _ = await read_request(reader)
        if head.startswith(b"GET /garbage"):
            await stream.send(b"SPDY/9 nonsense\r\n\r\n")
        elif head.startswith(b"GET /cut"):
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
            return
        elif head.startswith(b"GET /stall"):
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst")
        await anyio.sleep(5)

    async with raw_server(handler) as server, client(timeout=0.3) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await http.get(server.url + "/garbage")
        with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
            await http.get(server.url + "/cut")
        with pytest.raises(httpx.ReadTimeout):
            await http.get(server.url + "/silent")
        async with http.stream("GET", server.url + "/stall") as response:
            with pytest.raises(httpx.ReadTimeout):
                await response.aread()
        stats = http.link_transport.pool.stats()  # type: ignore[attr-defined]
    assert stats["upstream_open"] == 0  # every broken connection was closed, none pooled

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_leaving_a_body_unread_closes_its_connection() -> None:
    async def handler(stream: SocketStream, reader: BufferedByteReceiveStream, n: int) -> None:
        await read_request(reader)
        await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await anyio.sleep(5)

    async with raw_server(handler) as server, client() as http:
        async with http.stream("GET", server.url + "/") as response:
            async for _ in response.aiter_raw():
                break
        stats = http.link_transport.pool.stats()  # type: ignore[attr-defined]
    assert stats == {"upstream_opened": 1, "upstream_reused": 0, "upstream_open": 0, "upstream_idle": 0}


async def test_other_schemes_go_to_the_fallback_transport() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text="from the fallback")

    async with client(fallback=httpx.MockTransport(answer)) as http:
        response = await http.get("https://llm.example/v1/models")
    assert response.text == "from the fallback" and seen == ["https://llm.example/v1/models"]


def test_direct_http_only_for_plain_http_without_an_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert direct_http("http://vllm.internal:8000/v1")
    assert not direct_http("https://api.openai.com/v1") and not direct_http("")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    assert not direct_http("http://vllm.internal:8000/v1")
    monkeypatch.setenv("NO_PROXY", "vllm.internal,localhost")
    assert direct_http("http://vllm.internal:8000/v1") and not direct_http("http://other:8000/v1")
