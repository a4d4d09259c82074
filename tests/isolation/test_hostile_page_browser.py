"""An admin opens a hostile workspace page in headless Chromium; its script attacks the hub with the admin's
credentials and gets nothing.

The page (served by alice's workspace: its IDE is a small server of ours that the relay reaches like any IDE)
tries, with ``credentials: "include"``: ``POST /api/auth/tokens`` (JSON and a preflight-free text/plain
form), ``GET`` and ``POST /api/admin/users``, the hub's terminal WebSocket of bob's workspace, and the hub's
API through relative URLs on its own host. Every attempt fails, and the audit log gains no token, no user
and no terminal.

- Subdomain mode (``CODEHUB_WORKSPACE_DOMAIN=ws.localhost``; Chromium resolves ``*.localhost`` to loopback):
  the admin enters alice's workspace through the ticket flow; the page runs on ``<id>.ws.localhost``, another
  site than the hub's ``localhost``, so the hub's cookie never rides along, and the hub's API is not served
  on the workspace's host.
- Path mode: the admin is refused on alice's workspace (the page never runs); the same page served from
  another port of ``localhost`` (same site: the hub's cookie does ride along) is refused by the origin rule.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app import db
from app.factory import create_app
from app.models import AuditEvent
from tests.support.browser import chromium, need_browser
from tests.support.databases import fresh_database
from tests.support.relay import RelayHub
from tests.support.server import admin_token, free_port, serve_asgi
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

HOSTILE_SCRIPT = """
(async () => {
  const hub = %(hub)s, victim = %(victim)s, results = {};
  const attempt = async (name, run) => {
    try { results[name] = await run(); } catch (e) { results[name] = "failed: " + e.name; }
  };
  const post = (url, type, body) =>
    fetch(url, {method: "POST", credentials: "include", headers: {"Content-Type": type}, body});
  await attempt("token_json", async () => (await post(hub + "/api/auth/tokens", "application/json",
    JSON.stringify({name: "pwned"}))).status);
  await attempt("token_plain", async () => (await post(hub + "/api/auth/tokens", "text/plain",
    JSON.stringify({name: "pwned-plain"}))).status);
  await attempt("token_no_cors", async () => (await fetch(hub + "/api/auth/tokens", {method: "POST",
    mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({name: "pwned-blind"})})).type);
  await attempt("users_read", async () => (await (await fetch(hub + "/api/admin/users",
    {credentials: "include"})).json()).length);
  await attempt("user_create", async () => (await post(hub + "/api/admin/users", "text/plain",
    JSON.stringify({username: "mallory", password: "mallory-password", role: "admin"}))).status);
  // on a workspace host, relative URLs would reach the hub's API if that host served it
  await attempt("own_host_api", async () => (await post("/api/auth/tokens", "application/json",
    JSON.stringify({name: "pwned-here"}))).status);
  await attempt("terminal", () => new Promise((resolve) => {
    const ws = new WebSocket(hub.replace("http", "ws") + "/ws/workspaces/" + victim);
    ws.onopen = () => { ws.send("id\\r"); resolve("open"); };
    ws.onclose = (e) => resolve("closed " + e.code);
    setTimeout(() => resolve("timeout"), 8000);
  }));
  window.attackResults = results;
  document.title = "attack done";
})();
"""


def hostile_app(aim: dict[str, str]) -> Any:
    """A workspace's server whose every page is the hostile page, aimed at ``aim["hub"]`` and the terminal of
    workspace ``aim["victim"]``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        script = HOSTILE_SCRIPT % {"hub": json.dumps(aim["hub"]), "victim": json.dumps(aim["victim"])}
        body = f"<!doctype html><title>hostile</title><script>{script}</script>".encode()
        headers = [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def page_db(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database for this test's hub."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@dataclass
class Scene:
    """A hub with alice's workspace serving the hostile page, aimed at bob's workspace's terminal."""

    hub: RelayHub
    origin: str
    alice_ws: str
    bob_ws: str
    hostile: str


@asynccontextmanager
async def scene(url: str, tmp: Path, **overrides: object) -> AsyncIterator[Scene]:
    """A hub on ``http://localhost:<port>`` with alice and bob, each with a running workspace; alice's IDE is
    the hostile page's server."""
    port = free_port()
    origin = f"http://localhost:{port}"
    if overrides.get("workspace_domain"):
        overrides["public_url"] = origin
    settings = make_settings(tmp / "data", database_url=url, runtime="local", idle_timeout=0, **overrides)
    token = await admin_token(settings)
    app = create_app(settings)
    aim: dict[str, str] = {"hub": origin}
    async with serve_asgi(app, port=port) as base, serve_asgi(hostile_app(aim)) as hostile:
        hub = RelayHub(base, settings, token, app=app)
        hub.alice = await hub.new_user("alice")
        hub.bob = await hub.new_user("bob")
        alice_ws = await hub.workspace(hub.alice, "site", hostile.removeprefix("http://"))
        aim["victim"] = await hub.workspace(hub.bob, "secret", "127.0.0.1:1")
        yield Scene(hub, origin, alice_ws, aim["victim"], hostile)


async def admin_session(hub_url: str) -> str:
    """The admin's session cookie value."""
    async with httpx.AsyncClient(base_url=hub_url) as client:
        r = await client.post("/api/auth/login", json={"username": "admin", "password": "admin-password-1"})
        assert r.status_code == 200
        return r.cookies["codehub_session"]


async def audit_actions(hub: RelayHub) -> list[tuple[str, str]]:
    """Every audit entry's action and outcome, oldest first."""
    engine = db.create_engine(hub.settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            rows = await session.execute(select(AuditEvent.action, AuditEvent.outcome).order_by(AuditEvent.id))
            return [(a, o) for a, o in rows]
    finally:
        await engine.dispose()


async def run_page(
    hub_origin: str, session: str, url: str, seen: list[tuple[str, str, int]] | None = None
) -> tuple[dict[str, Any] | None, list[int]]:
    """Open ``url`` in Chromium with the admin's hub cookie; the hostile script's results (None when it never
    ran) and the statuses of the navigations. ``seen`` collects what the network answered (method, URL,
    status), which the page's script cannot read across origins."""
    statuses: list[int] = []
    seen = [] if seen is None else seen
    async with chromium() as browser:
        context = await browser.new_context()
        await context.add_cookies(
            [{"name": "codehub_session", "value": session, "url": hub_origin, "httpOnly": True, "sameSite": "Lax"}]
        )
        page = await context.new_page()
        page.on("response", lambda r: r.request.is_navigation_request() and statuses.append(r.status))
        page.on("response", lambda r: seen.append((r.request.method, r.url, r.status)))
        await page.goto(url, timeout=30_000)
        try:
            await page.wait_for_function("document.title === 'attack done'", timeout=20_000)
        except Exception:
            return None, statuses
        results: dict[str, Any] = await page.evaluate("window.attackResults")
        return results, statuses


def assert_all_failed(results: dict[str, Any]) -> None:
    """No attempt on the hub got anything: refusals, network errors, opaque answers, a closed socket."""
    assert set(results) == {
        "token_json",
        "token_plain",
        "token_no_cors",
        "users_read",
        "user_create",
        "own_host_api",
        "terminal",
    }
    for name in ("token_json", "token_plain", "user_create", "users_read"):
        assert results[name] in (401, 403) or str(results[name]).startswith("failed"), (name, results)
    assert results["token_no_cors"] in ("opaque", "failed: TypeError")
    assert str(results["terminal"]).startswith("closed"), results


async def nothing_gained(hub: RelayHub, before: list[tuple[str, str]]) -> None:
    """The audit log gained no token, user or terminal; the admin's tokens and the users are as they were."""
    new = (await audit_actions(hub))[len(before) :]
    assert not [a for a, _ in new if a.startswith(("token.", "user.", "admin.", "terminal."))], new
    async with hub.client() as client:
        users = (await client.get("/api/admin/users")).json()
        names = [u["username"] for u in (users["items"] if isinstance(users, dict) else users)]
        assert "mallory" not in names
        tokens = (await client.get("/api/auth/tokens")).json()
        assert not [t for t in tokens if t["name"].startswith("pwned")]


async def test_subdomain_mode_hostile_page(page_db: str, tmp_path: Path) -> None:
    need_browser()
    async with scene(page_db, tmp_path, workspace_domain="ws.localhost") as sc:
        before = await audit_actions(sc.hub)
        session = await admin_session(sc.hub.url)
        seen: list[tuple[str, str, int]] = []
        results, statuses = await run_page(sc.origin, session, f"{sc.origin}/w/{sc.alice_ws}/page.html", seen)
        assert results is not None, statuses
        assert statuses == [302, 302, 302, 302, 200], statuses  # hub → ws start → hub ticket → ws enter → page
        assert_all_failed(results)
        assert results["own_host_api"] == 421
        # another site: the hub's cookie never rode along
        hub_answers = {status for method, url, status in seen if url.startswith(f"{sc.origin}/api/")}
        assert hub_answers <= {401}, seen
        await nothing_gained(sc.hub, before)
        entered = [a for a, _ in (await audit_actions(sc.hub))[len(before) :]]
        assert "workspace.impersonate" in entered  # the admin's entry itself is on the record


async def test_path_mode_hostile_page(page_db: str, tmp_path: Path) -> None:
    need_browser()
    async with scene(page_db, tmp_path) as sc:
        before = await audit_actions(sc.hub)
        session = await admin_session(sc.hub.url)
        results, statuses = await run_page(sc.origin, session, f"{sc.origin}/w/{sc.alice_ws}/page.html")
        assert results is None and statuses == [403], statuses  # refused: the page never runs
        # the same page on another port of localhost: the same site, so the hub's cookie rides along
        seen: list[tuple[str, str, int]] = []
        evil = sc.hostile.replace("127.0.0.1", "localhost") + "/page.html"
        results, _ = await run_page(sc.origin, session, evil, seen)
        assert results is not None
        assert_all_failed(results)
        # the cookie did ride along (403 cross_origin comes only after the cookie proved the admin; without it
        # the answer is 401) and the origin rule refused every write the browser let through
        writes = [status for method, url, status in seen if method == "POST" and url.startswith(sc.origin)]
        assert writes and set(writes) == {403}, seen
        await nothing_gained(sc.hub, before)
        assert all(o != "ok" or a == "auth.login" for a, o in (await audit_actions(sc.hub))[len(before) :])
