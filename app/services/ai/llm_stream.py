"""The OpenAI chat-completions wire format: response structs, an incremental SSE parser, and ``ChatStream``
(tokens of one streamed answer, with usage and time to first token)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec

from app import metrics
from app.errors import BadGateway


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of one completion, as the server reported them (or counted by us when it did not)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False


class Completion(msgspec.Struct, kw_only=True):
    """A whole (non-streamed) answer."""

    text: str
    usage: Usage
    finish_reason: str | None
    model: str


class _Delta(msgspec.Struct):
    content: str | None = None


class Choice(msgspec.Struct):
    """One choice of a chunk (streamed: ``delta``) or of a whole answer (``message``)."""

    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    model: str | None = None
    error: Any = None
    object: str | None = None
    message: Any = None


# Decodes one streamed chunk or a whole non-streamed answer.
decode_chunk = msgspec.json.Decoder(_Chunk).decode


def upstream_message(body: bytes | Any) -> str:
    """The human message inside an upstream error body (OpenAI, vLLM and llama.cpp shapes), else its text."""
    data = body
    if isinstance(body, bytes | bytearray):
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return body.decode(errors="replace").strip()[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str) and error:
            return error[:500]
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])[:500]
    return str(data)[:500]


class SSEParser:
    """Incremental Server-Sent Events parser: feed bytes, get ``(event, data)`` for each complete event."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = ""
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Consume ``chunk``; return the events it completed."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event or "message", b"\n".join(self._data)))
                self._data, self._event = [], ""
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode(errors="replace")
        return events


class ChatStream:
    """One streamed completion: iterate tokens (or batches of tokens), then read ``usage``/``finish_reason``."""

    def __init__(self, response: httpx.Response, model: str, started: float | None = None) -> None:
        self._response = response
        self.model = model
        self.finish_reason: str | None = None
        self.tokens = 0
        self.finished = False
        self._usage: Usage | None = None
        self._done = False
        self._started = time.perf_counter() if started is None else started

    @property
    def usage(self) -> Usage:
        """Usage reported by the server, or an estimate (completion = streamed deltas) when it sent none."""
        if self._usage is not None:
            return self._usage
        return Usage(completion_tokens=self.tokens, total_tokens=self.tokens, estimated=True)

    async def __aiter__(self) -> AsyncIterator[str]:
        async for batch in self.batches():
            for token in batch:
                yield token

    async def batches(self) -> AsyncIterator[list[str]]:
        """Yield the tokens that arrived together (one network read); one token each when the model is slow.

        Raises ``BadGateway`` on an error event, a malformed chunk, a broken stream or a read timeout.
        """
        parser = SSEParser()
        chunks = self._response.aiter_raw()  # identity encoding was asked for: no decoder layer
        try:
            async for raw in chunks:
                batch: list[str] = []
                failed: BadGateway | None = None
                for event, data in parser.feed(raw):
                    try:
                        self._handle(event, data, batch)
                    except BadGateway as exc:  # the tokens before it in the same read still count
                        failed = exc
                        break
                if batch:
                    if not self.tokens:
                        metrics.LLM_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - self._started)
                    self.tokens += len(batch)
                    yield batch
                if failed is not None:
                    raise failed
                if self._done:
                    break
        except httpx.TimeoutException:
            raise BadGateway(
                "the LLM server stopped sending tokens (CODEHUB_LLM_TIMEOUT)", code="llm_timeout"
            ) from None
        except httpx.TransportError as exc:
            raise BadGateway(f"the LLM server broke the stream: {exc}", code="llm_stream_broken") from None
        if not self._done and self.finish_reason is None:
            raise BadGateway("the LLM server ended the stream before finishing", code="llm_stream_broken")
        self.finished = True
        with anyio.move_on_after(1.0):  # read to the end so the connection goes back to the pool
            async for _ in chunks:
                pass

    def _handle(self, event: str, data: bytes, batch: list[str]) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        if self._done:
            return
        if event == "error":
            raise BadGateway(f"the LLM server failed mid-stream: {upstream_message(data)}", code="llm_error")
        try:
            chunk = decode_chunk(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise BadGateway("the LLM server sent a malformed stream chunk", code="llm_stream_broken") from None
        if chunk.error is not None or chunk.object == "error":
            message = upstream_message(
                {"error": chunk.error} if chunk.error is not None else {"message": chunk.message}
            )
            raise BadGateway(f"the LLM server failed mid-stream: {message}", code="llm_error")
        for choice in chunk.choices[:1]:
            if choice.delta is not None and choice.delta.content:
                batch.append(choice.delta.content)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.model:
            self.model = chunk.model
