"""The dashboard: one static page at ``/`` and its assets under ``/static`` (no build step, no CDN).

The page itself is public; everything it shows comes from the ``/api`` routes, authenticated by the
session cookie that ``POST /api/auth/login`` sets.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@cache
def _index_html() -> bytes:
    return (STATIC_DIR / "index.html").read_bytes()


@get("/", opt={"public": True}, include_in_schema=False, media_type="text/html; charset=utf-8")
async def dashboard() -> Response[bytes]:
    """The dashboard page."""
    return Response(_index_html(), headers=SECURITY_HEADERS, media_type="text/html; charset=utf-8")


def _nosniff(response: Response[Any]) -> Response[Any]:
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


static_files = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="dashboard-static",
    cache_control=CacheControlHeader(no_cache=True),
    after_request=_nosniff,
    opt={"public": True},
    include_in_schema=False,
)

DASHBOARD_ROUTES = [dashboard, static_files]
