"""Client for OpenAI-compatible chat completion servers (vLLM, llama.cpp server, OpenAI).

One shared ``httpx.AsyncClient`` per hub process; answers are streamed (``stream: true``) and the SSE
body is parsed incrementally as bytes arrive. What the hub's own client sees when something fails:

- no base URL or model configured → ``ServiceUnavailable`` ``llm_not_configured`` naming the setting
- cannot connect, even after the one retry → ``ServiceUnavailable`` ``llm_unreachable``
- upstream 429 → ``TooManyRequests`` ``llm_rate_limited`` carrying the upstream's Retry-After, so our
  client backs off exactly as the model server asked (it is not our server that is broken: no 502)
- any other upstream error status, an error event inside the stream, a stream cut short or malformed
  → ``BadGateway`` (``llm_error`` / ``llm_stream_broken``) with the upstream's message
- no byte within the read timeout → ``BadGateway`` ``llm_timeout``

Only failures where nothing was received are retried (connect errors, and a pooled connection the server
closed before answering), once. Leaving the ``stream()`` block early (our caller went away, or was
cancelled) closes the upstream response, which closes its connection: vLLM then aborts the generation.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec

from app import metrics
from app.errors import BadGateway, ServiceUnavailable, TooManyRequests
from app.services.llm_limits import InProcessLimiter, RequestLimiter
from app.settings import Settings

Message = dict[str, str]


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


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    model: str | None = None
    error: Any = None
    object: str | None = None
    message: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


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
                for event, data in parser.feed(raw):
                    self._handle(event, data, batch)
                if batch:
                    if not self.tokens:
                        metrics.LLM_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - self._started)
                    self.tokens += len(batch)
                    yield batch
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
            chunk = _decode_chunk(data)
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


def _nothing_received(exc: Exception) -> bool:
    """True for failures that prove the server never answered: the only ones worth one retry."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True
    return isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc)


def _retry_after(value: str | None) -> float:
    if not value:
        return 1.0
    try:
        return min(max(float(value), 0.0), 3600.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 1.0
    return min(max(when - time.time(), 0.0), 3600.0)


class LLMClient:
    """Talks to one OpenAI-compatible server with the hub's limits; create once, ``aclose()`` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: RequestLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.limiter: RequestLimiter = limiter or InProcessLimiter(
            max_concurrency=settings.llm_max_concurrency,
            rate_per_minute=settings.llm_rate_per_minute,
            burst=settings.llm_rate_burst,
        )
        headers = {"user-agent": "code-hub", "accept": "application/json, text/event-stream"}
        if settings.llm_api_key:
            headers["authorization"] = f"Bearer {settings.llm_api_key}"
        connect = settings.llm_connect_timeout
        self._http = httpx.AsyncClient(
            base_url=settings.llm_base_url.rstrip("/") + "/" if settings.llm_base_url else "http://unset/",
            headers=headers,
            timeout=httpx.Timeout(connect=connect, read=settings.llm_timeout, write=connect, pool=connect),
            # keep-alive shorter than uvicorn's (vLLM's) 5 s, so we rarely pick a connection it is closing
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=4.0),
            transport=transport,
        )

    @property
    def configured(self) -> bool:
        """True when a base URL and a model are set."""
        return bool(self.settings.llm_base_url and self.settings.llm_model)

    @property
    def model(self) -> str:
        """The model name sent upstream."""
        return self.settings.llm_model

    def require_configured(self) -> None:
        """Raise ``ServiceUnavailable`` naming the missing setting(s)."""
        missing = [
            name
            for name, value in (
                ("CODEHUB_LLM_BASE_URL", self.settings.llm_base_url),
                ("CODEHUB_LLM_MODEL", self.settings.llm_model),
            )
            if not value
        ]
        if missing:
            raise ServiceUnavailable(f"AI is not configured: set {' and '.join(missing)}", code="llm_not_configured")

    async def aclose(self) -> None:
        """Close the shared connection pool."""
        await self._http.aclose()

    def _body(
        self, messages: Sequence[Message], stream: bool, max_tokens: int | None, temperature: float | None
    ) -> bytes:
        limit = min(max_tokens or self.settings.llm_max_tokens, self.settings.llm_max_tokens)
        body: dict[str, Any] = {
            "model": self.settings.llm_model,
            "messages": list(messages),
            "stream": stream,
            "max_tokens": limit,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if temperature is not None:
            body["temperature"] = temperature
        return msgspec.json.encode(body)

    async def _send(self, body: bytes) -> httpx.Response:
        request = self._http.build_request(
            "POST",
            "chat/completions",
            content=body,
            headers={"content-type": "application/json", "accept-encoding": "identity"},
        )
        for attempt in (1, 2):
            try:
                response = await self._http.send(request, stream=True)
                break
            except httpx.TransportError as exc:
                if _nothing_received(exc):
                    if attempt == 1:
                        continue
                    raise ServiceUnavailable(
                        f"cannot reach the LLM server at {self.settings.llm_base_url}: {exc}", code="llm_unreachable"
                    ) from None
                if isinstance(exc, httpx.TimeoutException):
                    raise BadGateway(
                        "the LLM server did not answer in time (CODEHUB_LLM_TIMEOUT)", code="llm_timeout"
                    ) from None
                raise BadGateway(f"the LLM server failed: {exc}", code="llm_error") from None
        if response.status_code != 200:
            content = b""
            try:
                with anyio.move_on_after(self.settings.llm_connect_timeout):
                    content = await response.aread()
            except httpx.TransportError:
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
            raise self._status_error(response, content)
        return response

    def _status_error(self, response: httpx.Response, content: bytes) -> Exception:
        message = upstream_message(content)
        status = response.status_code
        if status == 429:
            return TooManyRequests(
                f"the LLM server is rate limiting: {message}",
                retry_after=_retry_after(response.headers.get("retry-after")),
                code="llm_rate_limited",
            )
        hint = " (check CODEHUB_LLM_API_KEY)" if status in (401, 403) else ""
        return BadGateway(
            f"the LLM server answered {status}: {message}{hint}", code="llm_error", upstream_status=status
        )

    @asynccontextmanager
    async def stream(
        self,
        messages: Sequence[Message],
        *,
        user_key: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[ChatStream]:
        """Start a streamed chat completion for ``user_key`` (limits apply); iterate the yielded stream.

        Errors before the first byte of the answer raise here; errors while streaming raise from the
        iteration. Leaving the block closes the upstream request.
        """
        self.require_configured()
        started = time.perf_counter()
        outcome, chat = "error", None
        try:
            async with self.limiter.acquire(user_key):
                response = await self._send(self._body(messages, True, max_tokens, temperature))
                try:
                    chat = ChatStream(response, self.settings.llm_model, started)
                    yield chat
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            outcome = "ok" if chat is not None and chat.finished else "cancelled"
        except TooManyRequests:
            outcome = "rate_limited"
            raise
        except (anyio.get_cancelled_exc_class(), GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            _record(outcome, started, chat.usage if chat is not None else None)

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        user_key: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """A non-streamed chat completion (``stream: false``) with the same limits and error mapping."""
        self.require_configured()
        started = time.perf_counter()
        outcome, usage = "error", None
        try:
            async with self.limiter.acquire(user_key):
                response = await self._send(self._body(messages, False, max_tokens, temperature))
                try:
                    body = await response.aread()
                except httpx.TimeoutException:
                    raise BadGateway(
                        "the LLM server did not answer in time (CODEHUB_LLM_TIMEOUT)", code="llm_timeout"
                    ) from None
                except httpx.TransportError as exc:
                    raise BadGateway(f"the LLM server broke the answer: {exc}", code="llm_stream_broken") from None
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            try:
                chunk = _decode_chunk(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise BadGateway("the LLM server sent a malformed answer", code="llm_error") from None
            usage = chunk.usage or Usage(estimated=True)
            outcome = "ok"
        except TooManyRequests:
            outcome = "rate_limited"
            raise
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        finally:
            _record(outcome, started, usage)
        choice = chunk.choices[0] if chunk.choices else _Choice()
        text = (choice.message.content if choice.message else None) or ""
        return Completion(
            text=text, usage=usage, finish_reason=choice.finish_reason, model=chunk.model or self.settings.llm_model
        )


def _record(outcome: str, started: float, usage: Usage | None) -> None:
    """Count one LLM request into the metrics (latency by outcome; tokens as reported or estimated)."""
    metrics.LLM_SECONDS.labels(outcome).observe(time.perf_counter() - started)
    if usage is not None:
        metrics.LLM_TOKENS.labels("prompt").inc(usage.prompt_tokens)
        metrics.LLM_TOKENS.labels("completion").inc(usage.completion_tokens)


@asynccontextmanager
async def open_llm(settings: Settings, *, limiter: RequestLimiter | None = None) -> AsyncIterator[LLMClient]:
    """An ``LLMClient`` for the app's lifetime (build it in the lifespan, on the serving event loop)."""
    client = LLMClient(settings, limiter=limiter)
    try:
        yield client
    finally:
        await client.aclose()
