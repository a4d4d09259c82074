"""Domain errors and their one mapping to HTTP.

Every failure a client can cause is a ``DomainError`` subclass with a stable ``code``; the app turns it
into ``{"error": code, "detail": message, ...extra}`` with the class's status. The tree:

- ``BadRequest`` (400) — malformed input (``invalid_json``, ``bad_request``, ``bad_path``, ``bad_diff``)
- ``Unauthorized`` (401) — no or bad credentials
- ``Forbidden`` (403) — authenticated but not allowed (``forbidden``, ``bad_origin``)
- ``NotFound`` (404) — missing, or owned by someone else
- ``Conflict`` (409) — state or uniqueness conflict (``conflict``, ``patch_conflict``, ``workspace_busy``)
- ``PreconditionFailed`` (412) — ``If-Match`` / base hash mismatch
- ``PayloadTooLarge`` (413)
- ``UnsupportedMediaType`` (415)
- ``Unprocessable`` (422) — well-formed but invalid values
- ``TooManyRequests`` (429) — with ``retry_after`` seconds
- ``BadGateway`` (502) — an upstream (LLM server, IDE) failed
- ``ServiceUnavailable`` (503) — a dependency is not configured or not answering
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import msgspec

ASGISend = Callable[[Any], Awaitable[None]]


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error the hub sends: ``{"error": code, "detail": message, ...extra}``."""
    return {"error": code, "detail": detail, **extra}


async def send_error(
    send: ASGISend, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    """Send an error ``body`` as JSON straight to an ASGI ``send``: for the edges that answer before (or
    without) Litestar's routing, the same response its exception handlers give."""
    data = msgspec.json.encode(body)
    raw_headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    for name, value in (headers or {}).items():
        raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class DomainError(Exception):
    """Base of every error a client can cause; carries an HTTP status and a stable code."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.headers = headers or {}
        self.extra = extra

    def to_body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return error_body(self.code, self.detail, **self.extra)


class BadRequest(DomainError):
    """400: the request cannot be understood."""

    status = 400
    default_code = "bad_request"


class Unauthorized(DomainError):
    """401: no or invalid credentials."""

    status = 401
    default_code = "unauthorized"


class Forbidden(DomainError):
    """403: the caller may not do this."""

    status = 403
    default_code = "forbidden"


class NotFound(DomainError):
    """404: no such resource visible to the caller."""

    status = 404
    default_code = "not_found"


class Conflict(DomainError):
    """409: conflicts with the current state."""

    status = 409
    default_code = "conflict"


class PreconditionFailed(DomainError):
    """412: a precondition header or base hash did not match."""

    status = 412
    default_code = "precondition_failed"


class PayloadTooLarge(DomainError):
    """413: the body or file is over a limit."""

    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    """415: wrong content type (e.g. binary on a text route)."""

    status = 415
    default_code = "unsupported_media_type"


class Unprocessable(DomainError):
    """422: well-formed but invalid values."""

    status = 422
    default_code = "validation_error"


class TooManyRequests(DomainError):
    """429: over a rate or concurrency limit."""

    status = 429
    default_code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: float, **extra: Any) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, retry_after=seconds, **extra)


class BadGateway(DomainError):
    """502: an upstream answered badly or not at all."""

    status = 502
    default_code = "bad_gateway"


class ServiceUnavailable(DomainError):
    """503: a needed service is not configured or not answering."""

    status = 503
    default_code = "service_unavailable"
