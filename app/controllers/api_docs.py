"""The API docs: the OpenAPI document at ``/schema/openapi.json`` and Swagger UI at ``/schema``, offline.

Swagger UI's files come from the ``swagger-ui-py`` package (installed with the hub, never a CDN) and are
served under ``/schema-assets``. Before the document is served, ``finish`` makes it say what the hub does:

- every error response (4xx/5xx) is the hub's ``{error, detail, errors?}`` body (``#/components/schemas/
  ErrorBody``), never Litestar's default ``{status_code, detail, extra}``;
- every operation that takes parameters or a body documents 400; every authenticated ``/api`` operation
  documents 401 and 429 (the per-token rate limit); 204 responses have no content;
- a bearer scheme (API or session token) is required, the session cookie is described; public operations
  (``opt={"public": True}``) say ``security: []``;
- a handler's ``opt={"also_sends": {"200": "application/octet-stream"}}`` adds a media type it may answer;
- request bodies whose Struct refuses unknown fields say ``additionalProperties: false``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router

from app.controllers.deps import ERROR_DESCRIPTIONS
from app.services.auth.access import SESSION_COOKIE

ASSETS_PATH = "/schema-assets"
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "stable machine-readable code, e.g. not_found"},
        "detail": {"type": "string", "description": "what went wrong, in words"},
        "errors": {
            "type": "array",
            "description": "per-field problems of an invalid request",
            "items": {"type": "object", "additionalProperties": True},
        },
    },
    "additionalProperties": True,
    "description": "Every error the hub sends.",
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (codehub token, or POST /api/auth/tokens) or a login session token.",
    },
    "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE, "description": "The dashboard's session."},
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def swagger_assets_dir() -> Path:
    """Where the installed ``swagger-ui-py`` package keeps Swagger UI's files (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed: run `uv sync`")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _route_options(app: Litestar) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                found[(route.path_format or "/", method.lower())] = handler.opt
    return found


def _closed_structs() -> set[str]:
    """Names of the Structs that refuse unknown fields (``forbid_unknown_fields``), e.g. every request body."""
    found: set[str] = set()
    stack: list[type] = [msgspec.Struct]
    while stack:
        subclasses: list[Any] = stack.pop().__subclasses__()
        for sub in subclasses:
            stack.append(sub)
            if sub.__struct_config__.forbid_unknown_fields:
                found.add(sub.__name__)
    return found


def _close_request_bodies(schema: dict[str, Any], operation: dict[str, Any], closed: set[str]) -> None:
    schemas = schema["components"]["schemas"]
    for media in operation.get("requestBody", {}).get("content", {}).values():
        name = media.get("schema", {}).get("$ref", "").rpartition("/")[2]
        if name in closed and name in schemas:
            schemas[name]["additionalProperties"] = False


def _error_response(status: str) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS.get(int(status), "Error"),
        "content": {"application/json": {"schema": ERROR_REF}},
    }


def finish(app: Litestar, schema: dict[str, Any]) -> dict[str, Any]:
    """Make the generated document match what the hub sends (idempotent; mutates and returns ``schema``)."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorBody"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    schema["security"] = [{"bearer": []}]  # the cookie is the dashboard's; listing it makes clients send one
    options = _route_options(app)
    closed = _closed_structs()
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            _close_request_bodies(schema, operation, closed)
            if operation.get("parameters") or operation.get("requestBody") or "{" in path:
                responses.setdefault("400", {})
            opt = options.get((path, method), {})
            for status, media_type in opt.get("also_sends", {}).items():
                content = responses.setdefault(status, {"description": "OK"}).setdefault("content", {})
                content.setdefault(media_type, {"schema": {"type": "string", "format": "binary"}})
            if opt.get("public"):
                operation["security"] = []
            elif path.startswith("/api/"):
                responses.setdefault("401", {})
                responses.setdefault("429", {})
            for status, response in responses.items():
                if status == "204":
                    response.pop("content", None)
                elif status[:1] in ("4", "5"):
                    description = response.get("description") or ""
                    responses[status] = _error_response(status)
                    if description and not description.startswith(("Bad Request", "Validation")):
                        responses[status]["description"] = description
    return schema


class JsonDocument(JsonRenderPlugin):
    """``/schema/openapi.json``: the finished document."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The document as JSON."""
        return super().render(request, finish(request.app, openapi_schema))


class SwaggerPage(SwaggerRenderPlugin):
    """Swagger UI with the finished document and the hub's own copy of its files."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The Swagger UI page."""
        return super().render(request, finish(request.app, openapi_schema))


def openapi_config(version: str) -> OpenAPIConfig:
    """OpenAPI at ``/schema/openapi.json``; Swagger UI at ``/schema`` and ``/schema/swagger``."""
    return OpenAPIConfig(
        title="code-hub",
        version=version,
        description=(
            "Self-hosted hub for browser development workspaces. SSE-first. Authenticate with "
            "`Authorization: Bearer <token>` (API token or login session token) or the session cookie."
        ),
        path="/schema",
        render_plugins=[
            SwaggerPage(
                path=["/", "/swagger"],
                js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                css_url=f"{ASSETS_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
                favicon="<link rel='icon' type='image/svg+xml' href='/static/favicon.svg'>",
            ),
            JsonDocument(),
        ],
    )


swagger_assets = create_static_files_router(
    path=ASSETS_PATH,
    directories=[swagger_assets_dir()],
    name="swagger-assets",
    cache_control=CacheControlHeader(max_age=3600),
    opt={"public": True},
    include_in_schema=False,
)
