"""The dashboard at ``/`` driven in headless Chromium (Playwright's async API) against a real hub on uvicorn.

The hub uses SQLite, the in-process event hub and the local-process runtime with the fake IDE, so the page
sees real lifecycle events, logs and status. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.browser import PASSWORD, PHONE, artifact, login, open_page, row
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, free_port, running_hub
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small local repository to clone (``file://``; the hub allows it for admins in these tests)."""
    repo = tmp_path_factory.mktemp("repo")
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "HOME": str(repo),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    for i in range(50):
        (repo / f"file{i}.txt").write_text(f"line {i}\n" * 200)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "init"], check=True, env=env)
    return repo.as_uri()


@pytest.fixture(scope="module")
async def ui_hub(browser_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub over that database, with the local runtime running the fake IDE."""
    settings = make_settings(
        tmp_path_factory.mktemp("ui-data"),
        database_url=browser_db_url,
        local_ide_command=fake_ide_command(),
        start_timeout=30.0,
        allow_file_git_urls=True,
    )
    async with running_hub(settings) as hub:
        yield hub


@pytest.fixture
async def page(browser: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh browser context and page; a final screenshot (and the console's errors) saved whatever the outcome."""
    name = request.node.name
    async with open_page(
        browser, shot=artifact(f"dashboard-{name}-final.png"), console=artifact(f"dashboard-{name}-console.txt")
    ) as p:
        yield p


async def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot under test-artifacts/."""
    await page.screenshot(path=str(artifact(f"dashboard-{name}.png")), full_page=True)


async def user_token(hub: Hub, username: str, *, admin: bool = False) -> str:
    """Create a user (password ``PASSWORD``) and return an API token for it."""
    return await hub.new_user(username, admin=admin, password=PASSWORD)


WATCH_BARS = """() => {
  window.__bars = [];
  const seen = () => {
    for (const bar of document.querySelectorAll("#ws-body .progress:not([hidden])")) {
      const name = bar.closest("tr").querySelector("button.name").textContent;
      window.__bars.push(`${name}:${bar.dataset.kind}:${bar.closest("td").querySelector(".phase").textContent}`);
    }
  };
  new MutationObserver(seen).observe(document.querySelector("#ws-body"),
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""


async def bars_seen(page: Any) -> list[str]:
    """Progress bars that were visible since ``WATCH_BARS`` ran: ``name:kind:phase``."""
    return await page.evaluate("() => window.__bars")


async def has_route(hub: Hub, path: str) -> bool:
    """True when the hub's OpenAPI document lists ``path``."""
    async with hub.client() as client:
        r = await client.get("/schema/openapi.json")
        return path in r.json().get("paths", {})


async def test_page_is_public_and_static_assets_are_served(ui_hub: Hub) -> None:
    """``/`` and its assets need no credentials and carry a strict CSP; the API still does."""
    async with httpx.AsyncClient(base_url=ui_hub.url) as anon:
        r = await anon.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert '<script type="module" src="/static/js/main.js">' in r.text
        for asset in ("/static/js/main.js", "/static/dashboard.css", "/static/favicon.svg"):
            r = await anon.get(asset)
            assert r.status_code == 200, asset
            assert r.headers["x-content-type-options"] == "nosniff"
        assert (await anon.get("/static/../factory.py")).status_code == 404
        assert (await anon.get("/api/workspaces")).status_code == 401


async def test_login_create_live_events_delete(ui_hub: Hub, page: Any) -> None:
    """Sign in, create from the form, see workspaces created and deleted elsewhere appear live, delete."""
    from playwright.async_api import expect

    token = await user_token(ui_hub, "alice")
    await page.goto(ui_hub.url + "/")
    await expect(page.get_by_role("heading", name="Sign in to code-hub")).to_be_visible()
    await shot(page, "login")

    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password", exact=True).fill("wrong-password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#login-error")).to_be_visible()
    await expect(page.locator("#login-error")).not_to_be_empty()

    await login(page, ui_hub, "alice")
    await expect(page.locator("#ws-empty")).to_be_visible()
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")

    await page.get_by_label("Name", exact=True).fill("demo")
    await page.get_by_role("button", name="Create").click()
    await expect(row(page, "demo").locator(".badge")).to_have_text("created")
    await expect(page.locator("#detail-name")).to_have_text("demo")

    # The same name again: the hub's 409 detail is shown to the person, next to the name.
    await page.get_by_label("Name", exact=True).fill("demo")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("#create-form-name-error")).to_contain_text("already have a workspace named")

    # Created and deleted through the API (another tab, a script): the page follows without reload.
    async with ui_hub.client(token) as client:
        r = await client.post("/api/workspaces", json={"name": "from-api"})
        assert r.status_code == 201, r.text
        other = r.json()["id"]
        await expect(row(page, "from-api").locator(".badge")).to_have_text("created")
        await shot(page, "created-live")
        r = await client.delete(f"/api/workspaces/{other}")
        assert r.status_code == 204
        await expect(row(page, "from-api")).to_have_count(0)

    # The hub does not know our cursor (e.g. it restarted): it sends stream.reset, the page refetches the
    # list and keeps following events whatever their ids.
    async with page.expect_request(lambda r: "/api/workspaces?" in r.url):
        await page.evaluate("() => { const s = window.codehub.stream; s.lastId = '999999999'; s.connect(); }")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    async with ui_hub.client(token) as client:
        r = await client.post("/api/workspaces", json={"name": "after-reset"})
        await expect(row(page, "after-reset")).to_have_count(1)
        assert (await client.delete(f"/api/workspaces/{r.json()['id']}")).status_code == 204
        await expect(row(page, "after-reset")).to_have_count(0)

    # Delete from the page, through the confirmation dialog.
    await row(page, "demo").get_by_role("button", name="Delete demo", exact=True).click()
    await expect(page.locator("#confirm")).to_be_visible()
    await page.locator("#confirm-ok").click()
    await expect(row(page, "demo")).to_have_count(0)
    await expect(page.locator("#ws-empty")).to_be_visible()

    if await has_route(ui_hub, "/api/audit"):
        await page.get_by_role("link", name="Audit").click()
        await expect(page.locator("#audit-form").get_by_label("Actor")).to_be_hidden()
        await expect(page.locator("#audit-body")).to_contain_text("workspace.delete")
        await expect(page.locator("#audit-body")).to_contain_text("alice")
        await shot(page, "own-audit")
        await page.get_by_role("link", name="Workspaces").click()

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Sign in to code-hub")).to_be_visible()
    async with httpx.AsyncClient(base_url=ui_hub.url, cookies=await page.context.cookies()) as anon:
        assert (await anon.get("/api/auth/me")).status_code == 401


async def test_start_logs_status_stop(ui_hub: Hub, page: Any) -> None:
    """Start from the page: the start bar, ``running`` arriving live, log lines, status numbers, stop."""
    from playwright.async_api import expect

    if not await has_route(ui_hub, "/api/workspaces/{workspace_id}/start"):
        pytest.skip("the lifecycle routes (POST /api/workspaces/{id}/start) are not in this build yet")
    token = await user_token(ui_hub, "bob")
    await login(page, ui_hub, "bob")
    await page.get_by_label("Name", exact=True).fill("runner")
    await page.get_by_role("button", name="Create").click()
    ws = row(page, "runner")
    await expect(ws.locator(".badge")).to_have_text("created")

    await page.evaluate(WATCH_BARS)
    await ws.get_by_role("button", name="Start runner", exact=True).click()
    await expect(ws.locator(".badge")).to_have_text("running")
    assert any(b.startswith("runner:start:") for b in await bars_seen(page))
    await expect(ws.locator(".progress")).to_be_hidden()
    workspace_id = await ws.get_attribute("data-id")
    await expect(ws.get_by_role("link", name="Open the IDE of runner in a new tab")).to_have_attribute(
        "href", f"/w/{workspace_id}/"
    )
    # "Open" reaches the IDE through the hub's relay in a new tab, with the session cookie.
    async with page.context.expect_page() as opened:
        await ws.get_by_role("link", name="Open the IDE of runner in a new tab").click()
    ide = await opened.value
    await expect(ide.locator("body")).to_contain_text('"method": "GET"')
    await expect(ide.locator("body")).to_contain_text(workspace_id)
    await ide.close()
    await expect(page.locator("#log-mode")).to_have_text("following")
    await expect(page.locator("#logs .line").first).to_be_visible()
    # New IDE output arrives live: a status call makes the hub probe the IDE, which logs the request.
    lines = await page.locator("#logs .line").count()
    async with ui_hub.client(token) as client:
        assert (await client.get(f"/api/workspaces/{workspace_id}/status")).status_code == 200
    await page.wait_for_function("n => document.querySelectorAll('#logs .line').length > n", arg=lines)
    await expect(page.locator("#logs")).to_contain_text("GET /healthz")
    # The charts draw the polled samples (one every 3 s).
    await page.wait_for_function("() => window.codehub.details.cpu.points.length >= 3")
    await expect(page.locator("#mem-now")).not_to_be_empty()
    await expect(page.locator('#status-list dd[data-key="uptime"]')).not_to_have_text("\u2013")
    await expect(page.locator("#why-up")).to_contain_text("Still up")
    await shot(page, "running")

    await ws.get_by_role("button", name="Stop runner", exact=True).click()
    await expect(ws.locator(".badge")).to_have_text("stopped")
    await expect(page.locator("#log-mode")).to_contain_text("ended")
    await expect(page.locator("#why-up")).to_be_hidden()
    await shot(page, "stopped")

    # Started by someone else (the API): the page shows it running without a reload.
    async with ui_hub.client(token) as client:
        r = await client.post(f"/api/workspaces/{workspace_id}/start")
        assert r.status_code in (200, 202), r.text
        await expect(ws.locator(".badge")).to_have_text("running")
        assert (await client.post(f"/api/workspaces/{workspace_id}/stop")).status_code == 200
        await expect(ws.locator(".badge")).to_have_text("stopped")


async def servers_panel(hub: Hub, page: Any) -> None:
    """Servers with their counts; the test button reports the engine's answer (here: nothing listens)."""
    from playwright.async_api import expect

    async with hub.client() as client:
        r = await client.post(
            "/api/admin/servers", json={"name": "nowhere", "docker_url": f"tcp://127.0.0.1:{free_port()}"}
        )
        assert r.status_code == 201, r.text
        server_id = r.json()["id"]
        try:
            await page.get_by_role("link", name="Servers").click()
            server = page.locator("#servers-body tr", has_text="nowhere")
            await expect(server.locator("td.num").first).to_have_text("0")
            await server.get_by_role("button", name="Test nowhere").click()
            await expect(server.locator(".check")).to_contain_text("failed")
            await shot(page, "servers")
        finally:
            assert (await client.delete(f"/api/admin/servers/{server_id}")).status_code == 204


async def test_admin_sees_everyone_servers_and_audit(ui_hub: Hub, page: Any, git_repo: str) -> None:
    """Admins: every user's workspaces with the toggle, the servers panel, the audit list with filters."""
    from playwright.async_api import expect

    token = await user_token(ui_hub, "carol")
    async with ui_hub.client(token) as client:
        assert (await client.post("/api/workspaces", json={"name": "carols"})).status_code == 201
    await user_token(ui_hub, "root", admin=True)
    await login(page, ui_hub, "root")
    await expect(page.locator("#whoami")).to_contain_text("(admin)")
    await page.get_by_label("all users").check()
    await expect(row(page, "carols")).to_have_count(1)
    await expect(row(page, "carols").locator(".owner-col")).to_have_text("carol")

    await page.evaluate(WATCH_BARS)
    await page.get_by_label("Name", exact=True).fill("cloned")
    await page.get_by_label("Git URL").fill(git_repo)
    await page.get_by_role("button", name="Create").click()
    await expect(row(page, "cloned").locator(".badge")).to_have_text("created")
    await page.wait_for_function("() => window.__bars.some(b => b.startsWith('cloned:clone:done'))")
    await expect(row(page, "cloned").locator(".progress")).to_be_hidden()
    await expect(row(page, "cloned").locator(".reason")).to_be_empty()

    if await has_route(ui_hub, "/api/admin/servers"):
        await servers_panel(ui_hub, page)

    await page.get_by_role("link", name="Audit").click()
    await expect(page.locator("#audit-view")).to_be_visible()
    if await has_route(ui_hub, "/api/admin/audit"):
        await page.locator("#audit-form").get_by_label("Action").fill("workspace.create")
        await page.locator("#audit-form").get_by_role("button", name="Filter").click()
        await expect(page.locator("#audit-body tr").first).to_contain_text("workspace.create")
        await expect(page.locator("#audit-body")).not_to_contain_text("auth.login")
        await page.locator("#audit-form").get_by_label("Actor").fill("carol")
        await page.locator("#audit-form").get_by_role("button", name="Filter").click()
        await expect(page.locator("#audit-body tr")).to_have_count(1)
        await expect(page.locator("#audit-body tr")).to_contain_text("carols")
        await page.get_by_role("button", name="Verify chain").click()
        await expect(page.locator("#audit-chain")).to_contain_text("chain intact")
    else:
        await expect(page.locator("#audit-empty")).to_contain_text("not available")
    await shot(page, "audit")


async def test_dark_and_narrow_layouts(ui_hub: Hub, browser: Any) -> None:
    """The same page in dark mode on a phone-sized viewport (screenshots for a person to look at)."""
    from playwright.async_api import expect

    token = await user_token(ui_hub, "dana")
    async with ui_hub.client(token) as client:
        for name in ("phone-a", "phone-b"):
            assert (await client.post("/api/workspaces", json={"name": name})).status_code == 201
    async with open_page(browser, viewport=PHONE, color_scheme="dark") as page:
        await login(page, ui_hub, "dana")
        await expect(row(page, "phone-a")).to_have_count(1)
        await row(page, "phone-a").get_by_role("button", name="Show details of phone-a", exact=True).click()
        await expect(page.locator("#detail-name")).to_have_text("phone-a")
        background = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)", background
        await shot(page, "dark-phone")
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
