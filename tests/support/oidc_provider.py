"""A real OpenID provider (node-oidc-provider, ``tests/oidc_provider``) and a hub signed in to it, for tests.

``running_oidc_provider`` starts the provider with the machine's Node.js on a free port inside the test and
stops it at the end; it skips (or fails, when CODEHUB_TEST_REQUIRE names ``oidc``) without node or the
provider's ``node_modules`` (``npm ci`` in ``tests/oidc_provider``; ``scripts/services.sh`` runs it).
``sso_hub`` starts a provider and a hub that uses it. ``provider_round_trip`` plays the browser through the
provider's sign-in form with httpx and returns the callback URL the provider sends the browser to.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from app.factory import create_app
from app.settings import Settings
from tests.support.server import admin_token, free_port, serve_asgi
from tests.support.services import need
from tests.support.settings import make_settings

PROVIDER_DIR = Path(__file__).resolve().parents[1] / "oidc_provider"
USERS = {"alice": "alice-pass", "bob": "bob-pass"}  # and their groups: alice devs, hub-admins; bob designers
_FORM_ACTION_RE = re.compile(r'<form[^>]*action="([^"]+)"')


def need_oidc_provider() -> str:
    """Skip/fail without Node.js or the provider's packages; return the path of ``node``."""
    node = shutil.which("node")
    need("oidc", node is not None, "node is not installed (Debian: apt-get install nodejs npm)")
    assert node is not None
    modules = PROVIDER_DIR / "node_modules" / "oidc-provider"
    need("oidc", modules.is_dir(), "the provider's packages are missing: run `npm ci` in tests/oidc_provider")
    return node


@dataclass
class OidcProvider:
    """A running provider: its issuer, the one client, and the test-only control routes."""

    issuer: str
    client_id: str
    client_secret: str
    control_token: str
    process: Process | None = None

    async def _control(self, path: str, body: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"{self.issuer}{path}", json=body, headers={"X-Control-Token": self.control_token})
            r.raise_for_status()

    async def set_groups(self, user: str, groups: list[str]) -> None:
        """Change the groups claim of ``user`` (alice or bob) from now on."""
        await self._control("/_test/groups", {"user": user, "groups": groups})

    async def stop(self) -> None:
        """Stop the provider now (a provider that went away mid sign-in)."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with anyio.fail_after(10):
                await self.process.wait()

    async def timings(self) -> list[str]:
        """The paths of the token, userinfo and JWKS requests the provider served since the last call."""
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{self.issuer}/_test/timings", json={}, headers={"X-Control-Token": self.control_token}
            )
            r.raise_for_status()
            return [t["path"] for t in r.json()["timings"]]

    async def set_fault(self, mode: str) -> None:
        """Make the token endpoint hand out bad ID tokens: ``audience``, ``expired``, ``signature`` or ``none``."""
        await self._control("/_test/fault", {"mode": mode})


@asynccontextmanager
async def running_oidc_provider(
    redirect_uris: list[str], post_logout_redirect_uris: list[str], log_path: Path, *, id_token_claims: bool = False
) -> AsyncIterator[OidcProvider]:
    """Run the provider until the block ends (its stderr goes to ``log_path``); with ``id_token_claims`` the ID
    token carries the groups and names (else only userinfo has them)."""
    node = need_oidc_provider()
    port = free_port()
    provider = OidcProvider(
        issuer=f"http://127.0.0.1:{port}",
        client_id=f"hub-{secrets.token_hex(3)}",
        client_secret=secrets.token_urlsafe(24),
        control_token=secrets.token_urlsafe(24),
    )
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(
        PORT=str(port),
        CLIENT_ID=provider.client_id,
        CLIENT_SECRET=provider.client_secret,
        REDIRECT_URIS=",".join(redirect_uris),
        POST_LOGOUT_REDIRECT_URIS=",".join(post_logout_redirect_uris),
        CONTROL_TOKEN=provider.control_token,
        NODE_ENV="test",
        ID_TOKEN_CLAIMS="1" if id_token_claims else "0",
    )
    with log_path.open("wb") as log:
        process = await anyio.open_process(
            [node, "provider.mjs"], cwd=PROVIDER_DIR, env=env, stdout=subprocess.PIPE, stderr=log
        )
        try:
            assert process.stdout is not None
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 4096)
            assert json.loads(line)["issuer"] == provider.issuer, line
            provider.process = process
            yield provider
        except (anyio.EndOfStream, anyio.IncompleteRead, TimeoutError):
            raise AssertionError(f"the OpenID provider did not start: {log_path.read_text()[-2000:]}") from None
        finally:
            if process.returncode is None:
                process.terminate()
            with anyio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()


@dataclass
class SsoHub:
    """A hub signed in to a running provider."""

    url: str
    settings: Settings
    admin_token: str
    provider: OidcProvider

    def browser(self) -> httpx.AsyncClient:
        """A cookie-keeping client that plays a browser (redirects are followed by hand)."""
        return httpx.AsyncClient(base_url=self.url, timeout=30, follow_redirects=False)


@asynccontextmanager
async def sso_hub(
    tmp_path: Path, database_url: str, *, id_token_claims: bool = False, **overrides: Any
) -> AsyncIterator[SsoHub]:
    """A provider (see ``running_oidc_provider``) and a hub on ``database_url`` (from ``fresh_database``, made
    outside the event loop) using it; ``overrides`` go to the hub's settings."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    callbacks = [f"{url}/auth/oidc/callback"]
    log = tmp_path / "oidc-provider.log"
    async with running_oidc_provider(callbacks, [f"{url}/"], log, id_token_claims=id_token_claims) as provider:
        values: dict[str, Any] = {
            "database_url": database_url,
            "public_url": url,
            "oidc_issuer": provider.issuer,
            "oidc_client_id": provider.client_id,
            "oidc_client_secret": provider.client_secret,
            "oidc_provider_name": "Test IdP",
            "oidc_scopes": ("openid", "profile", "email", "groups"),
            "secret_key": secrets.token_hex(32),
        }
        values.update(overrides)
        settings = make_settings(tmp_path / "data", **values)
        token = await admin_token(settings)
        async with serve_asgi(create_app(settings), port=port):
            yield SsoHub(url, settings, token, provider)


async def provider_round_trip(
    browser: httpx.AsyncClient, user: str, *, next_path: str | None = None, password: str | None = None
) -> str:
    """Start a sign-in at the hub, sign in at the provider's form as ``user``; the callback URL (not visited)."""
    params = {"next": next_path} if next_path else {}
    r = await browser.get("/auth/oidc/login", params=params)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    for _ in range(10):
        if "/auth/oidc/callback" in location:
            return location
        r = await browser.get(location)
        if r.status_code == 200 and "idp-login" in r.text:
            action = html.unescape(_FORM_ACTION_RE.search(r.text).group(1))  # type: ignore[union-attr]
            form = {"login": user, "password": password or USERS[user]}
            r = await browser.post(httpx.URL(location).join(action), data=form)
        assert r.status_code in (302, 303), f"{r.status_code}: {r.text[:500]}"
        location = str(httpx.URL(location).join(r.headers["location"]))
    raise AssertionError("the provider never sent the browser back to the hub")
