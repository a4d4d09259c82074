"""Who may use the relay, no session from a token in the URL, and what a workspace that is not running looks like:
the starting page (auto-start through the lifecycle), the failure page, 503 for sub-requests; activity."""

from __future__ import annotations

import anyio
import httpx
import msgspec
import pytest

from app.services.auth.access import Credentials
from app.streams.relay.access import (
    rewrite_location,
    rewrite_set_cookie,
    strip_session_cookie,
    without_access_token,
)
from tests.support.lifecycle import wait_state
from tests.support.relay import RelayHub

pytestmark = pytest.mark.anyio

HTML = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}


@pytest.fixture(scope="module")
async def ws_id(relay_hub: RelayHub, upstream: str) -> str:
    """Alice's workspace, running at the upstream."""
    return await relay_hub.workspace(relay_hub.alice, "access-main", upstream)


def test_rewrite_location() -> None:
    prefix = b"/w/abc"
    assert rewrite_location(b"/x?y", prefix, b"hub:8000", "10.0.0.2:8080") == b"/w/abc/x?y"
    assert rewrite_location(b"/w/abc/", prefix, b"hub:8000", "10.0.0.2:8080") == b"/w/abc/"
    assert rewrite_location(b"/w/abcd", prefix, b"hub:8000", "10.0.0.2:8080") == b"/w/abc/w/abcd"
    assert (
        rewrite_location(b"http://10.0.0.2:8080/p", prefix, b"hub:8000", "10.0.0.2:8080") == b"http://hub:8000/w/abc/p"
    )
    assert rewrite_location(b"https://hub:8000/p#f", prefix, b"hub:8000", "x:1") == b"https://hub:8000/w/abc/p#f"
    assert rewrite_location(b"//other/p", prefix, b"hub:8000", "x:1") == b"//other/p"
    assert rewrite_location(b"../up", prefix, b"hub", "x:1") == b"../up"


def test_rewrite_set_cookie() -> None:
    prefix = b"/w/abc"
    assert rewrite_set_cookie(b"k=v; Path=/; Secure", prefix) == b"k=v; Path=/w/abc/; Secure"
    assert rewrite_set_cookie(b"k=v; path=/w/abc/x", prefix) == b"k=v; Path=/w/abc/x"
    assert rewrite_set_cookie(b"k=v; Domain=.example.com; Max-Age=5", prefix) == b"k=v; Max-Age=5"
    assert rewrite_set_cookie(b"k=v", prefix) == b"k=v"
    assert rewrite_set_cookie(b"codehub_session=x; Path=/", prefix) is None


def test_credentials_and_stripping() -> None:
    headers = [(b"cookie", b"a=1; codehub_session=chub_c; b=2"), (b"authorization", b"Bearer chub_h")]
    creds = Credentials(headers)  # same order as the API: header, then cookie
    assert (creds.token, creds.source, creds.cookie) == ("chub_h", "bearer", "chub_c")
    assert Credentials([(b"authorization", b"Basic abc"), headers[0]]).source == "cookie"
    assert strip_session_cookie(b"a=1; codehub_session=chub_c; b=2") == b"a=1; b=2"
    assert strip_session_cookie(b"codehub_session=chub_c") == b""
    assert without_access_token(b"a=1&access_token=t&b=%2F") == b"a=1&b=%2F"


async def test_owner_and_admin_only(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client("") as anon:
        r = await anon.get(f"/w/{ws_id}/")
        assert r.status_code == 401 and "Sign in" in r.text
    async with relay_hub.client(relay_hub.bob) as bob:
        r = await bob.get(f"/w/{ws_id}/")
        assert r.status_code == 404 and "No such workspace" in r.text
        assert (await bob.get("/w/doesnotexist99/")).status_code == 404
        assert (await bob.get("/w/UPPER_case/")).status_code == 404
    async with relay_hub.client(relay_hub.alice) as alice:
        assert (await alice.get(f"/w/{ws_id}/healthz")).text == "ok"
    async with relay_hub.client(relay_hub.admin_token) as admin:
        r = await admin.get(f"/w/{ws_id}/healthz")
        assert r.status_code == 403 and "not yours" in r.text and "CODEHUB_ADMIN_PATH_ACCESS" in r.text


async def test_admin_path_access_is_audited_impersonation(relay_hub: RelayHub, ws_id: str) -> None:
    relay = relay_hub.relay
    relay.settings = msgspec.structs.replace(relay.settings, admin_path_access=True)
    try:
        async with relay_hub.client(relay_hub.admin_token) as admin:
            for _ in range(3):
                assert (await admin.get(f"/w/{ws_id}/healthz")).text == "ok"
            audit = (await admin.get("/api/admin/audit", params={"action": "workspace.impersonate"})).json()
    finally:
        relay.settings = msgspec.structs.replace(relay.settings, admin_path_access=False)
    entries = [e for e in audit["items"] if e["workspace_id"] == ws_id]
    assert len(entries) == 1 and entries[0]["actor_name"] == "admin"


async def test_a_token_in_the_url_signs_no_one_in(relay_hub: RelayHub, ws_id: str) -> None:
    async with relay_hub.client("") as browser:
        for token in ("chub_invalid", relay_hub.bob, relay_hub.alice):
            r = await browser.get(f"/w/{ws_id}/page", params={"a": "1", "access_token": token}, headers=HTML)
            assert r.status_code == 401 and "set-cookie" not in r.headers and not browser.cookies
            assert 'href="/?next=%2Fw%2F' in r.text and "access_token" not in r.text  # back here after signing in
        assert (await browser.get("/api/auth/me")).status_code == 401
    async with relay_hub.client(relay_hub.alice) as client:  # signed in: an old link's token never reaches the IDE
        r = await client.post(f"/w/{ws_id}/post", params={"access_token": relay_hub.alice, "k": "v"})
        assert r.status_code == 200 and r.json()["query"] == "k=v"


async def test_not_running_pages(relay_hub: RelayHub) -> None:
    failed = await relay_hub.workspace(relay_hub.alice, "access-failed", None, state="failed")
    await relay_hub.set_row(failed, state_reason="the IDE exited with 1\nlast output:\nboom <script>")
    stopping = await relay_hub.workspace(relay_hub.alice, "access-stopping", None, state="stopping")
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.get(f"/w/{failed}/", headers=HTML)
        assert r.status_code == 503 and "boom &lt;script&gt;" in r.text and "Start again" in r.text
        r = await client.get(f"/w/{stopping}/", headers=HTML)
        assert r.status_code == 503 and "EventSource" in r.text and f'const id = "{stopping}"' in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        r = await client.get(f"/w/{stopping}/static/app.js")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
    rows = {w["id"]: w for w in await _list(relay_hub)}
    assert rows[stopping]["state"] == "stopping"  # nothing started it


async def _list(hub: RelayHub) -> list[dict]:
    async with hub.client(hub.alice) as client:
        return (await client.get("/api/workspaces")).json()["items"]


async def test_opening_a_stopped_workspace_starts_it(relay_hub: RelayHub) -> None:
    async with relay_hub.client(relay_hub.alice) as client:
        r = await client.post("/api/workspaces", json={"name": "access-auto"})
        ws = r.json()["id"]
        r = await client.get(f"/w/{ws}/static/x.js")  # a sub-request does not start it
        assert r.status_code == 503
        assert (await client.get(f"/api/workspaces/{ws}")).json()["state"] == "created"
        r = await client.get(f"/w/{ws}/", headers=HTML)
        assert r.status_code == 503 and "Starting access-auto" in r.text and "EventSource" in r.text
        body = await wait_state(client, ws, {"running", "failed"})
        assert body["state"] == "running", body["state_reason"]
        r = await client.get(f"/w/{ws}/anything", headers=HTML)
        assert r.status_code == 200 and r.json()["path"] == "/anything"
        with anyio.fail_after(10):
            while (await client.get(f"/api/workspaces/{ws}")).json()["last_activity_source"] != "relay":
                await client.get(f"/w/{ws}/healthz")
                await anyio.sleep(0.1)
        writes = relay_hub.relay.activity.writes
        for _ in range(20):
            await client.get(f"/w/{ws}/healthz")
        assert relay_hub.relay.activity.writes == writes  # rate-limited: no write per request
        r = await client.post(f"/api/workspaces/{ws}/stop")
        assert r.json()["state"] == "stopped"
        with anyio.fail_after(5):
            while ws in relay_hub.relay.stats.workspaces:  # the stop event dropped its counters
                await anyio.sleep(0.05)
        r = await client.get(f"/w/{ws}/x")
        assert r.status_code == 503


async def test_hub_starting_and_bad_paths(relay_hub: RelayHub) -> None:
    async with httpx.AsyncClient(base_url=relay_hub.url) as client:
        assert (await client.get("/w/")).status_code == 404
        assert (await client.get("/w")).status_code == 404
