"""What the IDE sees of a relayed request's headers, and what the client sees of its answer's.

Upstream: the hub's credentials (its session cookie, a Bearer token), hop-by-hop headers and every
forwarding header a client could spoof are dropped; ``X-Forwarded-For/Proto/Host/Prefix`` are set from the
connection; the start's IDE secret is presented as the IDE's session cookie. Downstream: hop-by-hop
headers and the IDE's ``Date``/``Server`` are dropped, ``Location`` and ``Set-Cookie`` are moved under the
workspace's prefix (``app.streams.relay.access``).
"""

from __future__ import annotations

from typing import Any

from app.services.auth.access import Credentials
from app.services.runtime.ide_secret import ide_cookie_header
from app.streams.net.pool import HOP_BY_HOP
from app.streams.relay.access import rewrite_location, rewrite_set_cookie, strip_session_cookie

DROP_UP = HOP_BY_HOP | {
    b"host",
    b"expect",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"x-forwarded-port",
    b"x-real-ip",
}
DROP_DOWN = HOP_BY_HOP | {b"date", b"server"}  # the ASGI server sets its own


def upstream_headers(
    scope: dict[str, Any],
    headers: list[tuple[bytes, bytes]],
    creds: Credentials,
    prefix: bytes,
    *,
    ide_cookie: bytes | None,
    public_scheme: str | None,
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers for the IDE (credentials, hop-by-hop and spoofable forwarding headers removed; the start's IDE
    secret presented as its session cookie) and Host."""
    out: list[tuple[bytes, bytes]] = []
    host = b""
    listed: set[bytes] | None = None
    cookies: list[bytes] = []
    for name, value in headers:
        if name in DROP_UP:
            if name == b"host":
                host = value
            elif name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")} - DROP_UP
                listed = (listed or set()) | tokens if tokens else listed
            continue
        if name == b"cookie":
            value = strip_session_cookie(value)
            if value:
                cookies.append(value)
            continue
        if name == b"authorization" and creds.source == "bearer":
            continue
        out.append((name, value))
    if listed:  # headers the client named in Connection are hop-by-hop too
        out = [(name, value) for name, value in out if name not in listed]
        cookies = [] if b"cookie" in listed else cookies
    client = scope.get("client")
    scheme = public_scheme or ("https" if scope.get("scheme") in ("https", "wss") else "http")
    out.append((b"x-forwarded-for", client[0].encode() if client else b""))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        out.append((b"x-forwarded-host", host))
    if prefix:
        out.append((b"x-forwarded-prefix", prefix))
    cookie = ide_cookie_header(cookies, ide_cookie)
    if cookie is not None:
        out.append((b"cookie", cookie))
    return out, host


def response_headers(
    headers: list[tuple[bytes, bytes]], prefix: bytes, host: bytes, upstream: str
) -> list[tuple[bytes, bytes]]:
    """Headers for the client: hop-by-hop (and those ``Connection`` names) dropped, ``Location`` and
    ``Set-Cookie`` moved under the workspace's prefix."""
    out: list[tuple[bytes, bytes]] = []
    listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            listed.update(t.strip().lower() for t in value.split(b","))
    for name, value in headers:
        if name in DROP_DOWN or name in listed:
            continue
        if name == b"location":
            value = rewrite_location(value, prefix, host, upstream)
        elif name == b"set-cookie":
            fixed = rewrite_set_cookie(value, prefix)
            if fixed is None:
                continue
            value = fixed
        out.append((name, value))
    return out
