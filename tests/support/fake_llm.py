"""A fake OpenAI-compatible LLM server that streams like vLLM, scriptable per test.

It is a small raw ASGI app served by a real uvicorn server on a free loopback port (``serve_fake_llm``).
Tests script it through ``Behavior`` (the default one, or a queue consumed one per chat request) and
inspect ``FakeLLM.requests`` to see exactly what the hub sent.
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import uvicorn

Reply = str | Callable[[dict[str, Any]], str]


@dataclass
class Behavior:
    """How the fake answers one chat completion request."""

    reply: Reply = "Hello from the fake model."
    tokens: list[str] | None = None  # explicit tokenization; default splits the reply into words
    token_delay: float = 0.0  # seconds between tokens
    first_byte_delay: float = 0.0  # seconds before the response headers
    error_after: int | None = None  # send an in-stream error event after this many tokens
    drop_after: int | None = None  # drop the connection after this many tokens
    status: int = 200  # non-200 answers with an OpenAI-style error body
    error_message: str = "upstream exploded"
    retry_after: str | None = None  # Retry-After header on error answers
    model: str | None = None  # model name in answers; default: the requested one
    usage: bool = True  # honour stream_options.include_usage (False: like servers that ignore it)
    done: bool = True  # end streams with data: [DONE]
    stamp: bool = False  # append "@<unix time>" to each streamed token (benches measure relay delay)


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any

    @property
    def text(self) -> str:
        """Every message content joined, for "did this string leave the hub?" assertions."""
        if not isinstance(self.json, dict):
            return ""
        return "\n".join(str(m.get("content", "")) for m in self.json.get("messages", []))


@dataclass
class FakeLLM:
    """The fake's state: scripting, recorded requests, and counters of what happened."""

    default: Behavior = field(default_factory=Behavior)
    queue: deque[Behavior] = field(default_factory=deque)
    api_key: str | None = None  # when set, requests without this bearer key get 401
    requests: list[RecordedRequest] = field(default_factory=list)
    disconnects: int = 0  # chat requests the client abandoned before the answer was complete
    completed: int = 0  # streams sent to the end
    url: str = ""  # base URL ending in /v1, set once serving
    record: bool = True  # keep ``requests`` (benches turn it off)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def script(self, *behaviors: Behavior) -> None:
        """Queue behaviors for the next chat requests, in order (then ``default`` again)."""
        self.queue.extend(behaviors)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded POSTs to /v1/chat/completions."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            payload = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            payload = None
        path = scope["path"]
        if self.record:
            self.requests.append(RecordedRequest(scope["method"], path, headers, payload))
        if path == "/_fake/behavior" and scope["method"] == "POST" and isinstance(payload, dict):
            count = int(payload.pop("tokens", 0))
            self.default = Behavior(**payload, tokens=[f" t{i}" for i in range(count)] if count else None)
            await _send_json(send, 200, {"ok": True})
            return
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            await _send_json(send, 401, _error_body("Incorrect API key provided", "invalid_request_error", 401))
        elif path == "/v1/models" and scope["method"] == "GET":
            await _send_json(
                send,
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.default.model or "fake-model",
                            "object": "model",
                            "created": 0,
                            "owned_by": "fake",
                        }
                    ],
                },
            )
        elif path == "/v1/chat/completions" and scope["method"] == "POST":
            behavior = self.queue.popleft() if self.queue else self.default
            complete = False

            async def tracking_send(message: dict[str, Any]) -> None:
                nonlocal complete
                complete = complete or (message["type"] == "http.response.body" and not message.get("more_body"))
                await send(message)

            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if not complete:
                        self.disconnects += 1
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await self._chat(behavior, payload if isinstance(payload, dict) else {}, tracking_send)
                tg.cancel_scope.cancel()
        else:
            await _send_json(send, 404, _error_body(f"no route {path}", "not_found", 404))

    async def _chat(self, behavior: Behavior, request: dict[str, Any], send: Any) -> None:
        if behavior.first_byte_delay:
            await anyio.sleep(behavior.first_byte_delay)
        if behavior.status != 200:
            extra = [(b"retry-after", behavior.retry_after.encode())] if behavior.retry_after else []
            error_type = "rate_limit_exceeded" if behavior.status == 429 else "internal_server_error"
            body = _error_body(behavior.error_message, error_type, behavior.status)
            await _send_json(send, behavior.status, body, extra)
            return
        text = behavior.reply(request) if callable(behavior.reply) else behavior.reply
        tokens = list(behavior.tokens) if behavior.tokens is not None else split_tokens(text)
        finish = "stop"
        if isinstance(request.get("max_tokens"), int) and len(tokens) > request["max_tokens"]:
            tokens, finish = tokens[: request["max_tokens"]], "length"
        model = behavior.model or str(request.get("model", "fake-model"))
        usage = {"prompt_tokens": prompt_tokens(request), "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if not request.get("stream"):
            if behavior.token_delay:
                await anyio.sleep(behavior.token_delay * len(tokens))
            await _send_json(
                send,
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        include_usage = behavior.usage and bool((request.get("stream_options") or {}).get("include_usage"))
        await self._stream(send, behavior, tokens, finish, usage, completion_id, model, include_usage)

    async def _stream(
        self,
        send: Any,
        behavior: Behavior,
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
        completion_id: str,
        model: str,
        include_usage: bool,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                body["usage"] = None
            return b"data: " + msgspec.json.encode(body) + b"\n\n"

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await emit(chunk({"role": "assistant", "content": ""}))
        for index, token in enumerate(tokens):
            if behavior.error_after is not None and index == behavior.error_after:
                error = _error_body(behavior.error_message, "internal_server_error", 500)
                await emit(b"data: " + msgspec.json.encode(error) + b"\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if behavior.drop_after is not None and index == behavior.drop_after:
                return  # uvicorn closes the connection: the chunked body never completes
            if behavior.token_delay:
                await anyio.sleep(behavior.token_delay)
            await emit(chunk({"content": f"{token}@{time.time():.6f}" if behavior.stamp else token}))
        tail = chunk({}, finish)
        if include_usage:
            tail += (
                b"data: "
                + msgspec.json.encode(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        await send(
            {
                "type": "http.response.body",
                "body": tail + (b"data: [DONE]\n\n" if behavior.done else b""),
                "more_body": False,
            }
        )
        self.completed += 1


def split_tokens(text: str) -> list[str]:
    """Split text into word-ish tokens whose concatenation is the text."""
    return re.findall(r"\s*\S+|\s+", text)


def prompt_tokens(request: dict[str, Any]) -> int:
    """A rough prompt token count (words), as a server would report."""
    return sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []) or [])


def _error_body(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


async def _send_json(send: Any, status: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = msgspec.json.encode(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def bind_loopback() -> socket.socket:
    """A listening-ready TCP socket on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[int]:
    """Serve an ASGI app with a real uvicorn server on a free loopback port; yields the port."""
    sock = bind_loopback()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.005)
        try:
            yield port
        finally:
            server.should_exit = True
    sock.close()


@asynccontextmanager
async def serve_fake_llm(fake: FakeLLM | None = None) -> AsyncIterator[FakeLLM]:
    """Run a ``FakeLLM`` on a free loopback port for the duration of the block."""
    fake = fake or FakeLLM()
    async with serve_asgi(fake) as port:
        fake.url = f"http://127.0.0.1:{port}/v1"
        yield fake


@dataclass
class FlakyFront:
    """A TCP front that closes the first ``drop_first`` connections without answering, then proxies."""

    target_port: int
    drop_first: int = 1
    connections: int = 0
    url: str = ""

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        """Serve one accepted connection: drop it while ``drop_first`` lasts, else proxy it to the target."""
        self.connections += 1
        async with client:
            if self.connections <= self.drop_first:
                with anyio.move_on_after(0.2):  # read the request so closing sends FIN, not RST
                    while True:
                        with anyio.move_on_after(0.02) as idle:
                            await client.receive()
                        if idle.cancelled_caught:
                            break
                return
            upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
            async with upstream, anyio.create_task_group() as tg:

                async def pump(src: Any, dst: Any) -> None:
                    try:
                        async for data in src:
                            await dst.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)


@asynccontextmanager
async def flaky_front(target_port: int, drop_first: int = 1) -> AsyncIterator[FlakyFront]:
    """Serve a ``FlakyFront`` on a free loopback port; ``url`` is its /v1 base URL."""
    front = FlakyFront(target_port, drop_first)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    front.url = f"http://127.0.0.1:{port}/v1"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, front.handle)
        try:
            yield front
        finally:
            tg.cancel_scope.cancel()


def main() -> None:
    """Run the fake alone (for benches): ``python -m tests.support.fake_llm PORT``.

    ``POST /_fake/behavior`` with ``{"tokens": n, "token_delay": s, ...}`` (``Behavior`` fields) scripts it.
    """
    import sys

    port = int(sys.argv[1])
    uvicorn.run(
        FakeLLM(record=False), host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


if __name__ == "__main__":
    main()
