"""The LLM client against the fake OpenAI-compatible server: streaming, failures, retries, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from app.errors import BadGateway, ServiceUnavailable, TooManyRequests
from app.services.ai.limits import InProcessLimiter, TokenBucket
from app.services.ai.llm import LLMClient, SSEParser, upstream_message
from app.settings import load_settings
from app.streams.net.http_transport import LinkTransport
from tests.support.fake_llm import Behavior, FakeLLM, bind_loopback, flaky_front

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
_TRANSPORT = ["link"]


@pytest.fixture(autouse=True, params=["link", "httpx"])
def transport_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on the hub's transport (``LinkTransport``) and on httpx's own: same behaviour."""
    _TRANSPORT[0] = request.param
    yield request.param
    _TRANSPORT[0] = "link"


@asynccontextmanager
async def llm_client(url: str, **overrides: Any) -> AsyncIterator[LLMClient]:
    values: dict[str, Any] = {
        "llm_base_url": url,
        "llm_model": "test-model",
        "llm_api_key": "sk-hub",
        "llm_rate_per_minute": 0,
        "llm_max_concurrency": 8,
    }
    values.update(overrides)
    transport = LinkTransport() if _TRANSPORT[0] == "link" else None
    client = LLMClient(load_settings(environ={}, **values), transport=transport)
    try:
        yield client
    finally:
        await client.aclose()


async def collect(client: LLMClient, user: str = "u1", **kwargs: Any) -> tuple[str, Any]:
    async with client.stream(MESSAGES, user_key=user, **kwargs) as stream:
        text = "".join([token async for token in stream])
    return text, stream


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def test_streams_tokens_then_usage(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="def add(a, b):\n    return a + b\n")
    async with llm_client(fake_llm.url) as client:
        text, stream = await collect(client, max_tokens=100, temperature=0.1)
    assert text == "def add(a, b):\n    return a + b\n"
    assert stream.finish_reason == "stop"
    assert stream.usage.completion_tokens == stream.tokens == 8 and not stream.usage.estimated
    assert stream.usage.prompt_tokens == 3
    assert fake_llm.disconnects == 0 and fake_llm.completed == 1
    sent = fake_llm.chat_requests[0]
    assert sent.headers["authorization"] == "Bearer sk-hub"
    assert sent.json == {
        "model": "test-model",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 100,
        "stream_options": {"include_usage": True},
        "temperature": 0.1,
    }


async def test_max_tokens_is_capped_by_setting(fake_llm: FakeLLM) -> None:
    async with llm_client(fake_llm.url, llm_max_tokens=64) as client:
        await collect(client, max_tokens=10_000)
        await collect(client)
    assert [r.json["max_tokens"] for r in fake_llm.chat_requests] == [64, 64]


async def test_slow_tokens_arrive_one_by_one(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="a b c d", token_delay=0.03)
    async with llm_client(fake_llm.url) as client, client.stream(MESSAGES, user_key="u") as stream:
        batches = [batch async for batch in stream.batches()]
    assert batches == [["a"], [" b"], [" c"], [" d"]]


async def test_fast_tokens_may_be_batched_but_keep_order(fake_llm: FakeLLM) -> None:
    reply = " ".join(f"t{i}" for i in range(500))
    fake_llm.default = Behavior(reply=reply)
    async with llm_client(fake_llm.url) as client, client.stream(MESSAGES, user_key="u") as stream:
        batches = [batch async for batch in stream.batches()]
    assert "".join(t for b in batches for t in b) == reply and stream.tokens == 500


async def test_usage_is_estimated_when_the_server_sends_none(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="x y z", usage=False, done=False)
    async with llm_client(fake_llm.url) as client:
        text, stream = await collect(client)
    assert text == "x y z" and stream.usage.estimated and stream.usage.completion_tokens == 3


async def test_non_streaming_completion(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply=lambda req: req["messages"][-1]["content"].upper())
    async with llm_client(fake_llm.url) as client:
        answer = await client.complete(MESSAGES, user_key="u")
    assert answer.text == "HI" and answer.finish_reason == "stop" and answer.model == "test-model"
    assert answer.usage.completion_tokens == 1
    assert fake_llm.chat_requests[0].json["stream"] is False


async def test_error_mid_stream_is_bad_gateway_with_upstream_message(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(reply="a b c d", error_after=2, error_message="CUDA out of memory"))
    got: list[str] = []
    async with llm_client(fake_llm.url) as client:
        with pytest.raises(BadGateway, match="CUDA out of memory") as caught:
            async with client.stream(MESSAGES, user_key="u") as stream:
                async for token in stream:
                    got.append(token)
    assert caught.value.code == "llm_error" and caught.value.status == 502
    assert got == ["a", " b"]
    assert len(fake_llm.chat_requests) == 1


async def test_dropped_connection_is_bad_gateway_and_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(reply="a b c d", drop_after=2))
    async with llm_client(fake_llm.url) as client:
        with pytest.raises(BadGateway) as caught:
            await collect(client)
    assert caught.value.code == "llm_stream_broken"
    assert len(fake_llm.chat_requests) == 1


async def test_upstream_429_surfaces_as_429_with_its_retry_after(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(status=429, retry_after="12", error_message="queue full"))
    async with llm_client(fake_llm.url) as client:
        with pytest.raises(TooManyRequests, match="queue full") as caught:
            await collect(client)
    error = caught.value
    assert error.code == "llm_rate_limited" and error.headers == {"Retry-After": "12"}
    assert error.to_body()["retry_after"] == 12
    assert len(fake_llm.chat_requests) == 1


async def test_upstream_500_is_bad_gateway_with_message_and_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(status=500, error_message="model crashed"))
    async with llm_client(fake_llm.url) as client:
        with pytest.raises(BadGateway, match="answered 500: model crashed") as caught:
            await collect(client)
    assert caught.value.to_body()["upstream_status"] == 500
    assert len(fake_llm.chat_requests) == 1


async def test_rejected_key_points_at_the_setting(fake_llm: FakeLLM) -> None:
    fake_llm.api_key = "sk-other"
    async with llm_client(fake_llm.url) as client:
        with pytest.raises(BadGateway, match="CODEHUB_LLM_API_KEY"):
            await client.complete(MESSAGES, user_key="u")


async def test_slow_first_byte_times_out_without_retry(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(first_byte_delay=1.0))
    async with llm_client(fake_llm.url, llm_timeout=0.2) as client:
        with pytest.raises(BadGateway) as caught:
            await collect(client)
    assert caught.value.code == "llm_timeout"
    assert len(fake_llm.chat_requests) == 1


async def test_stalled_stream_times_out(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(reply="a b c", token_delay=1.0))
    async with llm_client(fake_llm.url, llm_timeout=0.2) as client:
        with pytest.raises(BadGateway) as caught:
            await collect(client)
    assert caught.value.code == "llm_timeout"


async def test_one_retry_when_the_server_closes_before_answering(fake_llm: FakeLLM) -> None:
    port = int(fake_llm.url.split(":")[-1].split("/")[0])
    async with flaky_front(port, drop_first=1) as front, llm_client(front.url) as client:
        text, _ = await collect(client)
    assert text == "Hello from the fake model."
    assert front.connections == 2 and len(fake_llm.chat_requests) == 1


async def test_gives_up_after_one_retry(fake_llm: FakeLLM) -> None:
    port = int(fake_llm.url.split(":")[-1].split("/")[0])
    async with flaky_front(port, drop_first=10) as front, llm_client(front.url) as client:
        with pytest.raises(ServiceUnavailable) as caught:
            await collect(client)
    assert caught.value.code == "llm_unreachable" and front.connections == 2
    assert fake_llm.chat_requests == []


async def test_connection_refused_is_service_unavailable() -> None:
    sock = bind_loopback()  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    try:
        async with llm_client(f"http://127.0.0.1:{port}/v1") as client:
            with pytest.raises(ServiceUnavailable, match="cannot reach the LLM server"):
                await collect(client)
    finally:
        sock.close()


async def test_not_configured_names_the_settings() -> None:
    async with llm_client("", llm_model="") as client:
        assert not client.configured
        with pytest.raises(ServiceUnavailable, match="CODEHUB_LLM_BASE_URL and CODEHUB_LLM_MODEL") as caught:
            await collect(client)
    assert caught.value.status == 503 and caught.value.code == "llm_not_configured"
    async with llm_client("http://x/v1", llm_model="") as client:
        with pytest.raises(ServiceUnavailable, match=r"set CODEHUB_LLM_MODEL$"):
            await client.complete(MESSAGES, user_key="u")


async def test_leaving_the_block_early_closes_the_upstream(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="a b c d e f g h i j", token_delay=0.05)
    async with llm_client(fake_llm.url) as client:
        async with client.stream(MESSAGES, user_key="u") as stream:
            async for _token in stream:
                break
        await wait_for(lambda: fake_llm.disconnects == 1)
        assert fake_llm.completed == 0


async def test_cancelling_the_caller_closes_the_upstream(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="a b c d e f g h i j", token_delay=0.05)
    got: list[str] = []
    async with llm_client(fake_llm.url) as client:
        with anyio.CancelScope() as scope:
            async with client.stream(MESSAGES, user_key="u") as stream:
                async for token in stream:
                    got.append(token)
                    scope.cancel()
        assert scope.cancelled_caught and got == ["a"]
        await wait_for(lambda: fake_llm.disconnects == 1)
        assert isinstance(client.limiter, InProcessLimiter) and client.limiter.active("u") == 0


async def test_cancelled_while_waiting_for_headers_closes_the_upstream(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(first_byte_delay=5.0)
    async with llm_client(fake_llm.url) as client:
        with anyio.move_on_after(0.2):
            await collect(client)
        await wait_for(lambda: fake_llm.disconnects == 1)


async def test_per_user_concurrency_limit(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="a b c", token_delay=0.02)
    async with llm_client(fake_llm.url, llm_max_concurrency=1) as client:
        async with client.stream(MESSAGES, user_key="alice") as stream:
            with pytest.raises(TooManyRequests) as caught:
                await collect(client, user="alice")
            assert caught.value.code == "ai_concurrency_limit"
            assert caught.value.headers["Retry-After"] == "1"
            await collect(client, user="bob")  # other users are not affected
            _ = [t async for t in stream]
        await collect(client, user="alice")  # the slot is free again


async def test_per_user_rate_limit(fake_llm: FakeLLM) -> None:
    async with llm_client(fake_llm.url, llm_rate_per_minute=6, llm_rate_burst=2) as client:
        await collect(client, user="alice")
        await collect(client, user="alice")
        with pytest.raises(TooManyRequests) as caught:
            await collect(client, user="alice")
        await collect(client, user="bob")
    assert caught.value.code == "ai_rate_limited"
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 10
    assert len(fake_llm.chat_requests) == 3


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=0.5, burst=2, clock=lambda: now[0])
    assert bucket.take("k") == 0 and bucket.take("k") == 0
    assert bucket.take("k") == pytest.approx(2.0)
    now[0] = 1.0
    assert bucket.take("k") == pytest.approx(1.0)
    now[0] = 2.0
    assert bucket.take("k") == 0
    assert TokenBucket(rate=0, burst=1).take("k") == 0


def test_sse_parser_handles_split_chunks_crlf_comments_and_multiline_data() -> None:
    parser = SSEParser()
    stream = b': ping\r\n\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: error\ndata: x\n\ndata: [DONE]\n\n'
    events = []
    for i in range(len(stream)):  # one byte at a time: every split point
        events += parser.feed(stream[i : i + 1])
    assert events == [("message", b'{"a":\n1}'), ("error", b"x"), ("message", b"[DONE]")]
    assert SSEParser().feed(b"data:no-space\r\rdata: y\n\n") == [("message", b"no-space"), ("message", b"y")]


def test_upstream_message_shapes() -> None:
    assert upstream_message(b'{"error": {"message": "boom", "type": "x"}}') == "boom"
    assert upstream_message(b'{"object": "error", "message": "vllm says no"}') == "vllm says no"
    assert upstream_message(b'{"error": "plain"}') == "plain"
    assert upstream_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert upstream_message(b"") == "(empty body)"
