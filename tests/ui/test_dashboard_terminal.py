"""The dashboard's terminal pane in Chromium: xterm.js from the npm package the install put in web/, joined to
a real shell of a running workspace (local runtime) over ``/ws/workspaces/{id}``; and what the page does when
those assets are not installed. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.controllers.dashboard import WEB_MODULES, vendor_installed
from tests.support.browser import login, open_page, row
from tests.support.runtime import fake_ide_command, remove_hub_containers
from tests.support.server import Hub, running_hub
from tests.support.services import need
from tests.support.settings import docker_settings, make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture(scope="module")
async def term_hub(browser_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub running workspaces as local processes (the fake IDE; the terminal is a real shell on a pty)."""
    need("browser", vendor_installed(WEB_MODULES), "the terminal's assets are not installed (just assets)")
    settings = make_settings(
        tmp_path_factory.mktemp("term-data"), database_url=browser_db_url, local_ide_command=fake_ide_command()
    )
    async with running_hub(settings) as hub:
        yield hub


async def running_workspace(hub: Hub, token: str, name: str) -> str:
    """Create and start a workspace through the API; its id once running."""
    async with hub.client(token) as client:
        r = await client.post("/api/workspaces", json={"name": name})
        assert r.status_code == 201, r.text
        ws_id: str = r.json()["id"]
        r = await client.post(f"/api/workspaces/{ws_id}/start", params={"wait": "true"})
        assert r.status_code in (200, 202), r.text
        for _ in range(100):
            if (await client.get(f"/api/workspaces/{ws_id}")).json()["state"] == "running":
                return ws_id
            await anyio.sleep(0.1)
    raise AssertionError(f"{name} did not reach running")


async def test_vendor_files_are_allow_listed(term_hub: Hub) -> None:
    """Only the three named files come from node_modules, with their types; the terminal page may be framed
    by the hub's own pages only, and its policy allows no inline script."""
    async with httpx.AsyncClient(base_url=term_hub.url) as anon:
        for name, kind in (("xterm.mjs", "text/javascript"), ("addon-fit.mjs", "text/javascript")):
            r = await anon.get(f"/vendor/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
            assert r.headers["x-content-type-options"] == "nosniff"
        assert (await anon.get("/vendor/xterm.css")).headers["content-type"].startswith("text/css")
        for attack in (
            "/vendor/package.json",
            "/vendor/..%2F..%2Fpackage-lock.json",
            "/vendor/%2E%2E/xterm.mjs",
            "/vendor/@xterm%2Fxterm%2Fpackage.json",
            "/vendor/xterm.mjs.map",
        ):
            r = await anon.get(attack)
            assert r.status_code == 404, (attack, r.status_code)
            assert "package" not in r.text.lower() or "no asset" in r.text
        r = await anon.get("/terminal", params={"workspace": "x"})
        assert r.status_code == 200
        policy = r.headers["content-security-policy"]
        assert "frame-ancestors 'self'" in policy and "script-src 'self';" in policy
        assert r.headers["x-frame-options"] == "SAMEORIGIN"
        dashboard = await anon.get("/")
        assert "frame-ancestors 'none'" in dashboard.headers["content-security-policy"]
        assert "data-terminal" not in dashboard.text


async def test_terminal_pane_runs_a_command_and_follows_resizes(term_hub: Hub, browser: Any, tmp_path: Path) -> None:
    """Terminal button → pane → type a command → its output; resizing the pane resizes the pty."""
    from playwright.async_api import expect

    token = await term_hub.new_user("tess")
    ws_id = await running_workspace(term_hub, token, "shell")
    async with open_page(browser, shot=tmp_path / "terminal-final.png") as page:
        await login(page, term_hub, "tess")
        ws = row(page, "shell")
        await expect(ws.locator(".badge")).to_have_text("running")
        await ws.get_by_role("button", name="Open a terminal in shell").click()
        await expect(page.locator("#term-pane")).to_be_visible()
        assert await page.locator("#term-frame").get_attribute("src") == f"/terminal?workspace={ws_id}"
        term = page.frame_locator("#term-frame")
        await expect(term.locator(".xterm-rows")).to_be_visible()
        await page.wait_for_function("() => document.querySelector('#term-state').textContent === 'connected'")
        await term.locator(".xterm-helper-textarea").focus()
        await page.keyboard.type("echo hello-$((6*7)) && pwd\n")
        await expect(term.locator(".xterm-rows")).to_contain_text("hello-42")
        await page.screenshot(path=str(tmp_path / "terminal.png"), full_page=True)

        frame = page.frame(url=lambda u: "/terminal" in u)
        assert frame is not None
        size = await frame.evaluate("() => [window.codehubTerminal.rows, window.codehubTerminal.cols]")
        await page.keyboard.type("stty size\n")
        await expect(term.locator(".xterm-rows")).to_contain_text(f"{size[0]} {size[1]}")
        await page.evaluate("() => { document.querySelector('#term-frame').style.height = '200px'; }")
        await frame.wait_for_function(f"() => window.codehubTerminal.rows < {size[0]}")
        smaller = await frame.evaluate("() => [window.codehubTerminal.rows, window.codehubTerminal.cols]")
        await page.keyboard.type("clear; stty size\n")
        await expect(term.locator(".xterm-rows")).to_contain_text(f"{smaller[0]} {smaller[1]}")

        # The shell ends: the pane says so; closing the pane hangs up.
        await page.keyboard.type("exit\n")
        await frame.wait_for_function("() => document.getElementById('term-status').textContent.includes('exited')")
        await page.get_by_role("button", name="Close terminal").click()
        await expect(page.locator("#term-pane")).to_be_hidden()


async def test_terminal_refused_for_someone_else(term_hub: Hub, browser: Any) -> None:
    """The frame of another user's workspace does not open a shell (the socket is refused before the upgrade)."""
    owner = await term_hub.new_user("owner1")
    ws_id = await running_workspace(term_hub, owner, "private")
    await term_hub.new_user("mallory")
    async with open_page(browser) as page:
        await login(page, term_hub, "mallory")
        await page.goto(f"{term_hub.url}/terminal?workspace={ws_id}")
        await page.wait_for_function("() => document.getElementById('term-status').dataset.state === 'closed'")
        assert "could not open" in await page.locator("#term-status").inner_text()


async def test_without_assets_the_button_says_how_to_install(sqlite_url: str, tmp_path: Path, browser: Any) -> None:
    """A hub whose assets are not installed: the page works, the terminal pane explains ``just assets``."""
    settings = make_settings(
        tmp_path / "data",
        database_url=sqlite_url,
        local_ide_command=fake_ide_command(),
        web_assets_dir=str(tmp_path / "empty"),
    )
    async with running_hub(settings) as hub:
        token = await hub.new_user("nonpm")
        await running_workspace(hub, token, "bare")
        async with httpx.AsyncClient(base_url=hub.url) as anon:
            assert (await anon.get("/vendor/xterm.mjs")).status_code == 404
            r = await anon.get("/terminal")
            assert "just assets" in r.text and "<script" not in r.text
        from playwright.async_api import expect

        async with open_page(browser) as page:
            await login(page, hub, "nonpm")
            button = row(page, "bare").get_by_role("button", name="Open a terminal in bare")
            await expect(button).to_have_attribute(
                "title", "The terminal's browser assets are not installed (just assets)"
            )
            await button.click()
            await expect(page.locator("#term-missing")).to_contain_text("just assets")
            await expect(page.locator("#term-frame")).to_be_hidden()
            await page.screenshot(path=str(tmp_path / "terminal-missing.png"))


async def test_terminal_pane_in_a_docker_workspace(sqlite_url: str, tmp_path: Path, browser: Any) -> None:
    """The same pane on a container of the test image (``docker exec`` with a TTY): a command and its output,
    and the pty follows the pane's size."""
    from playwright.async_api import expect

    settings = docker_settings(tmp_path / "data", sqlite_url)
    try:
        async with running_hub(settings) as hub:
            token = await hub.new_user("dockie")
            await running_workspace(hub, token, "boxed")
            async with open_page(browser) as page:
                await login(page, hub, "dockie")
                await row(page, "boxed").get_by_role("button", name="Open a terminal in boxed").click()
                term = page.frame_locator("#term-frame")
                await page.wait_for_function("() => document.querySelector('#term-state').textContent === 'connected'")
                await term.locator(".xterm-helper-textarea").focus()
                await page.keyboard.type("echo in-$(hostname | cut -c1-3)-$((3*5))\n")
                await expect(term.locator(".xterm-rows")).to_contain_text("in-")
                await expect(term.locator(".xterm-rows")).to_contain_text("-15")
                frame = page.frame(url=lambda u: "/terminal" in u)
                assert frame is not None
                size = await frame.evaluate("() => [window.codehubTerminal.rows, window.codehubTerminal.cols]")
                await page.keyboard.type("stty size\n")
                await expect(term.locator(".xterm-rows")).to_contain_text(f"{size[0]} {size[1]}")
                await page.screenshot(path=str(tmp_path / "terminal-docker.png"))
    finally:
        remove_hub_containers(settings.hub_id)
