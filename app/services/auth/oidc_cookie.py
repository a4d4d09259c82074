"""The login cookie of a sign-in in progress: ``state``, ``nonce``, PKCE verifier, ``next`` and an expiry,
as compact JSON signed with a key derived from the hub's secret key. Only the hub can make one; the browser
that started the sign-in holds it (HttpOnly), so starting a sign-in writes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from app.errors import BadRequest

LOGIN_COOKIE = "codehub_oidc"
LOGIN_TTL = 600  # seconds a sign-in may take at the provider
_START_AGAIN = "start the sign-in again from the hub"


def refused(code: str, detail: str) -> BadRequest:
    """A sign-in the hub refuses because of what it was handed (400)."""
    return BadRequest(detail, code=code)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LoginCookie:
    """Signs and checks login cookies with a key derived from ``key`` (the hub's secret key)."""

    def __init__(self, key: bytes) -> None:
        self._key = hmac.new(key, b"codehub oidc login cookie", hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def sign(self, payload: dict[str, Any]) -> str:
        """The cookie's value carrying ``payload`` (which must hold its expiry, epoch seconds, as ``e``)."""
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def unsign(self, cookie: str | None) -> dict[str, Any]:
        """The payload of a cookie the hub signed and that has not expired; 400 with the reason otherwise."""
        if not cookie or len(cookie) > 4096 or "." not in cookie:
            raise refused("oidc_no_login", f"this browser has no sign-in in progress (or it timed out): {_START_AGAIN}")
        body, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise refused("oidc_bad_login_cookie", f"the sign-in cookie is not the hub's: {_START_AGAIN}")
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            raise refused("oidc_bad_login_cookie", f"the sign-in cookie is damaged: {_START_AGAIN}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("e"), int) or payload["e"] < time.time():
            raise refused("oidc_login_expired", f"the sign-in took too long: {_START_AGAIN}")
        return payload
