"""The dashboard: one static page at ``/`` and its assets under ``/static`` (no build step, no CDN).

The page itself is public; everything it shows comes from the ``/api`` routes, authenticated by the
session cookie that ``POST /api/auth/login`` sets.

The terminal pane is its own page (``/terminal``), framed by the dashboard: xterm.js writes ``<style>``
elements, so that page alone allows inline styles while the dashboard keeps a strict policy. xterm.js comes
from the npm registry at install time (``web/package-lock.json``, ``just assets``) and is served from
``web/node_modules`` (``CODEHUB_WEB_ASSETS_DIR``) under ``/vendor``; without it the terminal page and button
say how to install it.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from app.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
WEB_MODULES = Path(__file__).resolve().parent.parent.parent / "web" / "node_modules"
AnyRequest = Request[Any, Any, Any]
INSTALL_HINT = "Install the terminal's browser assets with `just assets` (npm ci in web/), then reload."

# The only files served from node_modules: name -> (path inside it, media type).
VENDOR_FILES = {
    "xterm.mjs": ("@xterm/xterm/lib/xterm.mjs", "text/javascript; charset=utf-8"),
    "xterm.css": ("@xterm/xterm/css/xterm.css", "text/css; charset=utf-8"),
    "addon-fit.mjs": ("@xterm/addon-fit/lib/addon-fit.mjs", "text/javascript; charset=utf-8"),
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

TERMINAL_HEADERS = {
    **SECURITY_HEADERS,
    # xterm.js measures and themes the terminal through <style> elements it creates; no script is inline.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; font-src 'self'; "
        "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "SAMEORIGIN",
}


@cache
def _index_html(terminal: bool) -> bytes:
    page = (STATIC_DIR / "index.html").read_bytes()
    # the page tells its terminal button up front whether the assets are there (no request to find out)
    return page if terminal else page.replace(b"<body>", b'<body data-terminal="missing">', 1)


@cache
def _terminal_html() -> bytes:
    return (STATIC_DIR / "terminal.html").read_bytes()


def web_modules(request: AnyRequest) -> Path:
    """Where the browser libraries are installed."""
    configured: str = request.app.state.ctx.settings.web_assets_dir
    return Path(configured) if configured else WEB_MODULES


def vendor_installed(modules: Path) -> bool:
    """True when every browser library the dashboard serves is installed under ``modules``."""
    return all((modules / path).is_file() for path, _ in VENDOR_FILES.values())


def _missing_assets_page() -> bytes:
    text = html.escape(f"The terminal is not available on this hub. {INSTALL_HINT}")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Terminal</title>'
        '<link rel="stylesheet" href="/static/terminal.css"></head>'
        f'<body><p id="term-missing" class="term-missing" role="alert">{text}</p></body></html>'
    ).encode()


@get("/", opt={"public": True}, include_in_schema=False, media_type="text/html; charset=utf-8")
async def dashboard(request: AnyRequest) -> Response[bytes]:
    """The dashboard page."""
    return Response(
        _index_html(vendor_installed(web_modules(request))),
        headers=SECURITY_HEADERS,
        media_type="text/html; charset=utf-8",
    )


@get("/terminal", opt={"public": True}, include_in_schema=False, media_type="text/html; charset=utf-8")
async def terminal_page(request: AnyRequest) -> Response[bytes]:
    """The terminal pane (framed by the dashboard); the workspace id is in the query, access is the socket's."""
    body = _terminal_html() if vendor_installed(web_modules(request)) else _missing_assets_page()
    return Response(body, headers=TERMINAL_HEADERS, media_type="text/html; charset=utf-8")


@get("/vendor/{name:str}", opt={"public": True}, include_in_schema=False)
async def vendor_file(request: AnyRequest, name: str) -> Response[bytes]:
    """One allow-listed file of an installed browser library (404 for anything else or when not installed)."""
    entry = VENDOR_FILES.get(name)
    path = web_modules(request) / entry[0] if entry else None
    if entry is None or path is None or not path.is_file():
        raise NotFound(f"no asset {name!r}; {INSTALL_HINT}", code="asset_not_found")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return Response(_read(path), headers=headers, media_type=entry[1])


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


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

DASHBOARD_ROUTES = [dashboard, terminal_page, vendor_file, static_files]
