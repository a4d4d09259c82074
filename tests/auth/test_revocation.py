"""Revocation is immediate: a revoked token or an ended session is refused at once by the API, the relay and
the terminal of the hub that revoked it, and by another hub process (same database and Redis) well within
the token cache TTL, which is set long here so that only an invalidation can explain the refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from websockets.exceptions import InvalidStatus

from app.factory import create_app
from app.settings import Settings
from tests.support.event_hubs import delete_prefix
from tests.support.server import Hub, running_hub, serve_asgi
from tests.support.services import need_redis
from tests.support.settings import make_settings
from tests.support.terminal import open_terminal

pytestmark = pytest.mark.anyio

LONG_TTL = 600.0
MISSING = "/w/nosuchws01/"  # signed in: 404 (no such workspace); not signed in: 401 (sign-in page)


async def _me(hub: Hub, **auth: str) -> int:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        return (await client.get("/api/auth/me", **_request(auth))).status_code


async def _relay(hub: Hub, **auth: str) -> int:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        return (await client.get(MISSING, **_request(auth))).status_code


async def _terminal(hub: Hub, token: str) -> int:
    try:
        async with open_terminal(hub.url, "nosuchws01", token):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _request(auth: dict[str, str]) -> dict[str, dict[str, str]]:
    if "token" in auth:
        return {"headers": _bearer(auth["token"])}
    return {"headers": {"Cookie": f"codehub_session={auth['session']}"}}


async def _api_token(hub: Hub, user_token: str) -> tuple[str, str]:
    async with hub.client(user_token) as client:
        created = (await client.post("/api/auth/tokens", json={"name": "revoke-me"})).json()
    return created["id"], created["token"]


async def _login(hub: Hub, username: str) -> str:
    async with httpx.AsyncClient(base_url=hub.url) as client:
        r = await client.post("/api/auth/login", json={"username": username, "password": "password-123"})
        r.raise_for_status()
        return str(r.json()["token"])


@pytest.fixture
async def hub(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """One hub (no Redis) whose token cache would keep a revoked token for ten minutes."""
    settings = make_settings(tmp_path, database_url=sqlite_url, token_cache_ttl=LONG_TTL)
    async with running_hub(settings) as running:
        yield running


async def test_a_revoked_token_is_refused_at_once_by_the_api_the_relay_and_the_terminal(hub: Hub) -> None:
    user = await hub.new_user("rita")
    token_id, token = await _api_token(hub, user)
    assert await _me(hub, token=token) == 200  # every door has now cached the token
    assert await _relay(hub, token=token) == 404
    assert await _terminal(hub, token) == 404
    async with hub.client(user) as client:
        assert (await client.delete(f"/api/auth/tokens/{token_id}")).status_code == 204
    assert await _relay(hub, token=token) == 401
    assert await _terminal(hub, token) == 401
    assert await _me(hub, token=token) == 401
    assert await _relay(hub, token=user) == 404  # the user's other token still works


async def test_logout_ends_the_session_at_once_everywhere(hub: Hub) -> None:
    await hub.new_user("sam")
    session = await _login(hub, "sam")
    assert await _relay(hub, session=session) == 404
    assert await _me(hub, session=session) == 200
    async with httpx.AsyncClient(base_url=hub.url) as client:
        client.cookies.set("codehub_session", session)
        assert (await client.post("/api/auth/logout")).status_code == 204
    assert await _relay(hub, session=session) == 401
    assert await _me(hub, session=session) == 401


async def test_disabling_a_user_locks_them_out_of_the_relay_at_once(hub: Hub) -> None:
    user = await hub.new_user("tess")
    assert await _relay(hub, token=user) == 404
    async with hub.client() as admin:
        users = (await admin.get("/api/admin/users")).json()
        tess = next(u for u in users if u["username"] == "tess")
        assert (await admin.patch(f"/api/admin/users/{tess['id']}", json={"disabled": True})).status_code == 200
    assert await _relay(hub, token=user) == 401


@asynccontextmanager
async def _second_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Another hub process's app on the same database and Redis (its own hub id and caches)."""
    other = msgspec.structs.replace(settings, hub_id=settings.hub_id + "-b")
    async with serve_asgi(create_app(other)) as url:
        yield Hub(url, other, "")


async def _refused_soon(check: object, *, within: float = 5.0) -> float:
    """Seconds until ``check()`` answers 401 (fails after ``within``)."""
    started = anyio.current_time()
    with anyio.fail_after(within):
        while await check() != 401:  # type: ignore[operator]
            await anyio.sleep(0.05)
    return anyio.current_time() - started


async def test_other_hub_processes_refuse_a_revoked_token_well_within_the_ttl(
    postgres_url: str, tmp_path: Path
) -> None:
    redis_url = need_redis()
    settings = make_settings(tmp_path, database_url=postgres_url, redis_url=redis_url, token_cache_ttl=LONG_TTL)
    try:
        async with running_hub(settings) as one, _second_hub(settings) as two:
            user = await one.new_user("uma")
            token_id, token = await _api_token(one, user)
            session = await _login(one, "uma")
            for check in (_me, _relay):  # the second hub caches both credentials
                assert await check(two, token=token) in (200, 404)
                assert await check(two, session=session) in (200, 404)
            async with one.client(user) as client:
                assert (await client.delete(f"/api/auth/tokens/{token_id}")).status_code == 204
            await _refused_soon(lambda: _relay(two, token=token))
            assert await _me(two, token=token) == 401
            async with httpx.AsyncClient(base_url=one.url) as client:
                client.cookies.set("codehub_session", session)
                assert (await client.post("/api/auth/logout")).status_code == 204
            await _refused_soon(lambda: _me(two, session=session))
            assert await _relay(two, session=session) == 401
            assert await _relay(two, token=user) == 404  # nothing else was dropped for good
    finally:
        await delete_prefix(redis_url, settings.redis_prefix)
