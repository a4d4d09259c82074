"""The fake LLM server speaks the real protocol: checked with the official ``openai`` client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.fake_llm import Behavior, FakeLLM

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(fake: FakeLLM, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test", max_retries=0, **kwargs)


async def test_streaming_with_usage(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="Hello there, world!")
    async with client(fake_llm) as ai:
        stream = await ai.chat.completions.create(
            model="m1", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 3
    assert all(c.model == "m1" for c in chunks)
    sent = fake_llm.chat_requests[0]
    assert sent.json["stream"] is True and sent.headers["authorization"] == "Bearer sk-test"


async def test_streaming_without_usage(fake_llm: FakeLLM) -> None:
    async with client(fake_llm) as ai:
        stream = await ai.chat.completions.create(model="m1", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake model."


async def test_non_streaming(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply=lambda req: f"echo: {req['messages'][-1]['content']}")
    async with client(fake_llm) as ai:
        answer = await ai.chat.completions.create(model="m2", messages=MESSAGES)
    assert answer.choices[0].message.content == "echo: Say hello"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.model == "m2"


async def test_max_tokens_finishes_with_length(fake_llm: FakeLLM) -> None:
    fake_llm.default = Behavior(reply="one two three four")
    async with client(fake_llm) as ai:
        answer = await ai.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert answer.choices[0].message.content == "one two"
    assert answer.choices[0].finish_reason == "length"


async def test_models(fake_llm: FakeLLM) -> None:
    async with client(fake_llm) as ai:
        models = await ai.models.list()
    assert [m.id for m in models.data] == ["fake-model"]


async def test_rate_limited_maps_to_rate_limit_error(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(status=429, retry_after="7", error_message="slow down"))
    async with client(fake_llm) as ai:
        with pytest.raises(openai.RateLimitError) as caught:
            await ai.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert "slow down" in caught.value.message


async def test_server_error_maps_to_internal_server_error(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(status=500, error_message="GPU on fire"))
    async with client(fake_llm) as ai:
        with pytest.raises(openai.InternalServerError) as caught:
            await ai.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 500 and "GPU on fire" in caught.value.message


async def test_bad_key_maps_to_authentication_error(fake_llm: FakeLLM) -> None:
    fake_llm.api_key = "sk-right"
    async with client(fake_llm) as ai:
        with pytest.raises(openai.AuthenticationError):
            await ai.chat.completions.create(model="m", messages=MESSAGES)


async def test_error_mid_stream_raises_api_error(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(reply="a b c d e", error_after=2, error_message="engine died"))
    got = []
    async with client(fake_llm) as ai:
        stream = await ai.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="engine died"):
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "a b"


async def test_dropped_connection_mid_stream(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(reply="a b c d e", drop_after=2))
    got = []
    async with client(fake_llm) as ai:
        stream = await ai.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises((httpx.RemoteProtocolError, openai.APIError)):
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "a b"


async def test_slow_first_byte_times_out(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(first_byte_delay=1.0))
    async with client(fake_llm, timeout=httpx.Timeout(0.2)) as ai:
        with pytest.raises(openai.APITimeoutError):
            await ai.chat.completions.create(model="m", messages=MESSAGES, stream=True)


async def test_client_going_away_is_seen(fake_llm: FakeLLM) -> None:
    fake_llm.script(Behavior(reply="a b c d e f g h", token_delay=0.05))
    async with client(fake_llm) as ai:
        stream = await ai.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            break
        await stream.close()
    for _ in range(100):
        if fake_llm.disconnects:
            break
        import anyio

        await anyio.sleep(0.01)
    assert fake_llm.disconnects == 1 and fake_llm.completed == 0
