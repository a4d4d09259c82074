"""The one JSON error renderer: ``{"error": code, "detail": message, ...extra}`` with its status and headers.

Litestar's exception handlers (``EXCEPTION_HANDLERS``) build bodies with ``app.errors.error_body``, as
``app.errors.send_error`` does for the ASGI edges that answer before routing (middleware, relay), so every
error a client sees has the same shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.serialization import encode_json
from litestar.types import ExceptionHandlersMap

from app.errors import DomainError, error_body

log = logging.getLogger(__name__)

_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    401: "unauthorized",
    403: "forbidden",
    429: "rate_limited",
}
_INTERNAL = error_body("internal_error", "internal error")


def error_response(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response[bytes]:
    """A Litestar response carrying the error ``body`` as JSON."""
    return Response(encode_json(body), status_code=status, headers=dict(headers or {}), media_type=MediaType.JSON)


def _on_domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    return error_response(exc.status, exc.to_body(), exc.headers)


def _snake(name: str) -> str:
    name = name.removesuffix("Exception")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "http_error"


def _on_validation_error(exc: ValidationException) -> Response[bytes]:
    detail = str(exc.detail)
    errors = exc.extra if isinstance(exc.extra, list) else []
    if any("malformed" in str(e.get("message", "")).lower() for e in errors if isinstance(e, dict)):
        return error_response(400, error_body("invalid_json", "the body is not valid JSON"))
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    if first.get("message"):
        where = f" at {first['key']}" if first.get("key") else ""
        detail = f"{first['message']}{where}"
    return error_response(400, error_body("invalid_request", detail, errors=errors))


def _on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, ValidationException):
        return _on_validation_error(exc)
    code = _CODES.get(exc.status_code, _snake(type(exc).__name__))
    detail = str(exc.detail)
    if isinstance(exc.__cause__, SerializationException):
        code, detail = "invalid_json", f"the body is not valid JSON: {detail}"
    if exc.status_code >= 500:
        log.error("http exception %s: %s", exc.status_code, detail)
        return error_response(exc.status_code, _INTERNAL)
    return error_response(exc.status_code, error_body(code, detail), exc.headers)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, _INTERNAL)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    DomainError: _on_domain_error,
    HTTPException: _on_http_exception,
    Exception: _on_unexpected,
}
