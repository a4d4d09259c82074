"""Client for OpenAI-compatible chat completion servers (vLLM, llama.cpp server, OpenAI).

One shared ``httpx.AsyncClient`` per hub process (the hub gives it ``app.streams.net.http_transport.LinkTransport``
for ``http://`` servers without a proxy: a streamed body comes one socket read at a time); answers are
streamed (``stream: true``) and the SSE body is parsed incrementally as bytes arrive.
What the hub's own client sees when something fails:

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
from app.services.ai.limits import InProcessLimiter, RequestLimiter
from app.services.ai.llm_stream import (
    ChatStream,
    Choice,
    Completion,
    SSEParser,
    Usage,
    decode_chunk,
    upstream_message,
)
from app.settings import Settings

Message = dict[str, str]
__all__ = ["ChatStream", "Completion", "LLMClient", "Message", "SSEParser", "Usage", "upstream_message"]


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
            transport=transport,  # None: httpx's own, with proxies from the environment (HTTP_PROXY...)
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
                chunk = decode_chunk(body)
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
        choice = chunk.choices[0] if chunk.choices else Choice()
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
