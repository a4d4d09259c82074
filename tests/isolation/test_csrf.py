"""Attacks on the hub's own origin, against a real uvicorn hub: a link carrying someone's token (forced login)
sets no cookie and grants nothing; requests another site makes with the victim's session cookie (POST, PATCH,
DELETE, sign-in, WebSocket upgrades to the relay and the terminal) are refused with 403 ``cross_origin`` and
change nothing, while the hub's own pages and Bearer tokens from anywhere get through; sign-in returns only to
paths on the hub's own origin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.databases import fresh_database
from tests.support.relay import RelayHub, start_relay_hub, upstream_process

pytestmark = pytest.mark.anyio

EVIL = "http://evil.example"
PASSWORD = "password-123"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The programmable upstream as alice's workspace's IDE (``host:port``)."""
    with upstream_process() as (_, address):
        yield address


@pytest.fixture(scope="module")
def csrf_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated SQLite database for this module's hub."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("csrfdb")) as url:
        yield url


@pytest.fixture(scope="module")
async def hub(csrf_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RelayHub]:
    """A hub with users alice and bob."""
    async with start_relay_hub(csrf_db, tmp_path_factory.mktemp("data")) as running:
        yield running


@pytest.fixture(scope="module")
async def ws_id(hub: RelayHub, upstream: str) -> str:
    """Alice's workspace, running at the upstream."""
    return await hub.workspace(hub.alice, "csrf-main", upstream)


@asynccontextmanager
async def browser(hub: RelayHub) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding alice's session cookie, as her browser does after signing in."""
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
        r = await client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 200 and "codehub_session" in client.cookies
        yield client


def assert_cross_origin(response: httpx.Response) -> None:
    """403 with the hub's JSON error body, code ``cross_origin``."""
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == "cross_origin" and response.json()["detail"]


async def token_names(hub: RelayHub) -> list[str]:
    """Alice's API tokens, as the API lists them."""
    async with hub.client(hub.alice) as client:
        return sorted(t["name"] for t in (await client.get("/api/auth/tokens")).json())


async def test_a_link_with_a_token_signs_no_one_in(hub: RelayHub, ws_id: str) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as victim:
        for path in ("/", "/api/auth/me", "/api/auth/tokens", f"/w/{ws_id}/", f"/w/{ws_id}/page"):
            r = await victim.get(path, params={"access_token": hub.alice}, headers={"Accept": "text/html"})
            assert "set-cookie" not in r.headers, path
            assert path == "/" or r.status_code == 401, (path, r.status_code)
        assert not victim.cookies
        assert (await victim.get("/api/auth/me")).status_code == 401
        r = await victim.post("/api/auth/tokens", params={"access_token": hub.alice}, json={"name": "forced"})
        assert r.status_code == 401
    assert "forced" not in await token_names(hub)


async def test_cookie_requests_from_another_origin_change_nothing(hub: RelayHub, ws_id: str) -> None:
    before = await token_names(hub)
    async with browser(hub) as alice:
        r = await alice.post("/api/auth/tokens", json={"name": "stolen"}, headers={"Origin": EVIL})
        assert_cross_origin(r)
        r = await alice.post("/api/auth/tokens", json={"name": "stolen"}, headers={"Sec-Fetch-Site": "cross-site"})
        assert_cross_origin(r)
        r = await alice.post("/api/auth/tokens", json={"name": "stolen"}, headers={"Origin": "null"})
        assert_cross_origin(r)
        assert await token_names(hub) == before
        r = await alice.patch(f"/api/workspaces/{ws_id}", json={"name": "pwned"}, headers={"Origin": EVIL})
        assert_cross_origin(r)
        assert (await alice.get(f"/api/workspaces/{ws_id}")).json()["name"] == "csrf-main"
        mine = (await alice.post("/api/auth/tokens", json={"name": "kept"}, headers={"Origin": hub.url})).json()
        r = await alice.delete(f"/api/auth/tokens/{mine['id']}", headers={"Sec-Fetch-Site": "same-site"})
        assert_cross_origin(r)
        assert "kept" in await token_names(hub)
        assert_cross_origin(await alice.post("/api/auth/logout", headers={"Origin": EVIL}))
        assert (await alice.get("/api/auth/me", headers={"Origin": EVIL})).status_code == 200  # reads are safe
        r = await alice.post(f"/w/{ws_id}/post", json={"k": "v"}, headers={"Origin": EVIL})  # through the relay
        assert_cross_origin(r)


async def test_the_hubs_own_pages_and_bearer_tokens_get_through(hub: RelayHub, ws_id: str) -> None:
    async with browser(hub) as alice:
        r = await alice.post("/api/auth/tokens", json={"name": "own-origin"}, headers={"Origin": hub.url})
        assert r.status_code == 201
        r = await alice.post("/api/auth/tokens", json={"name": "own-fetch"}, headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 201
        r = await alice.delete(f"/api/auth/tokens/{r.json()['id']}", headers={"Origin": hub.url})
        assert r.status_code == 204
        r = await alice.post(f"/w/{ws_id}/post", params={"k": "v"}, headers={"Origin": hub.url})
        assert r.status_code == 200 and r.json()["query"] == "k=v"
    async with hub.client(hub.alice) as program:
        r = await program.post("/api/auth/tokens", json={"name": "bearer-anywhere"}, headers={"Origin": EVIL})
        assert r.status_code == 201
        r = await program.patch(f"/api/workspaces/{ws_id}", json={"name": "csrf-main"}, headers={"Origin": EVIL})
        assert r.status_code == 200
    assert {"own-origin", "bearer-anywhere"} <= set(await token_names(hub))


async def test_sign_in_from_another_origin_is_refused(hub: RelayHub) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as victim:
        body = {"username": "bob", "password": PASSWORD}
        assert_cross_origin(await victim.post("/api/auth/login", json=body, headers={"Origin": EVIL}))
        assert not victim.cookies
        r = await victim.post("/api/auth/login", json=body, headers={"Origin": hub.url})
        assert r.status_code == 200 and "codehub_session" in victim.cookies


async def upgrade_status(url: str, origin: str, headers: dict[str, str]) -> int:
    """The status a WebSocket upgrade gets (101 when it opened)."""
    try:
        async with connect(url, origin=origin, additional_headers=headers, open_timeout=10):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_cross_origin_websockets_with_the_cookie_are_refused(hub: RelayHub, ws_id: str) -> None:
    async with browser(hub) as alice:
        cookie = {"Cookie": f"codehub_session={alice.cookies['codehub_session']}"}
    failed_before = hub.relay.stats.of(ws_id).failed_upgrades
    for path in (f"/w/{ws_id}/socket", f"/ws/workspaces/{ws_id}"):
        assert await upgrade_status(hub.ws_url + path, EVIL, cookie) == 403, path
        assert await upgrade_status(hub.ws_url + path, "null", cookie) == 403, path
    assert hub.relay.stats.of(ws_id).failed_upgrades == failed_before + 2
    assert await upgrade_status(hub.ws_url + f"/w/{ws_id}/socket", hub.url, cookie) == 101
    bearer = {"Authorization": f"Bearer {hub.alice}"}
    assert await upgrade_status(hub.ws_url + f"/w/{ws_id}/socket", EVIL, bearer) == 101


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "javascript:alert(document.cookie)",
        "/%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "/\t/evil.example",
        "/x%0d%0aSet-Cookie:%20a=b",
    ],
)
async def test_sign_in_never_sends_the_browser_elsewhere(hub: RelayHub, target: str) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
        r = await client.post("/api/auth/login", json={"username": "bob", "password": PASSWORD, "next": target})
        assert r.status_code == 200 and r.json()["next"] == "/"


async def test_sign_in_returns_to_the_workspace(hub: RelayHub, ws_id: str) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
        page = await client.get(f"/w/{ws_id}/src/?folder=%2Fhome", headers={"Accept": "text/html"})
        assert page.status_code == 401
        assert f'href="/?next=%2Fw%2F{ws_id}%2Fsrc%2F%3Ffolder%3D%252Fhome"' in page.text
        target = f"/w/{ws_id}/src/?folder=%2Fhome"
        r = await client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD, "next": target})
        assert r.json()["next"] == target
