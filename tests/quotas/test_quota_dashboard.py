"""The dashboard's quota line ("1 of 2 running") in headless Chromium, following lifecycle events live."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.databases import fresh_database
from tests.support.lifecycle import create, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.services import need
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "password-123"


@pytest.fixture
def quota_db(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite database (migrations run their own event loop: a sync fixture)."""
    if not Path(CHROMIUM).exists():
        need("browser", False, f"{CHROMIUM} is missing")
    need("browser", importlib.util.find_spec("playwright") is not None, "the playwright package is not installed")
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
async def quota_hub(quota_db: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub with the fake IDE and a default of 2 running workspaces per user."""
    settings = make_settings(
        tmp_path / "data", database_url=quota_db, local_ide_command=fake_ide_command(), quota_running=2
    )
    async with running_hub(settings) as hub:
        yield hub


async def test_the_quota_line_follows_starts_and_stops(quota_hub: Hub) -> None:
    from playwright.async_api import async_playwright, expect

    token = await quota_hub.new_user("quota-ui", password=PASSWORD)
    async with quota_hub.client(token) as client:
        ws = await create(client, "one")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            await page.goto(quota_hub.url + "/")
            await page.get_by_label("Username").fill("quota-ui")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            quota = page.locator("#quota")
            await expect(quota).to_have_text("0 of 2 running", timeout=20_000)
            async with quota_hub.client(token) as client:
                assert (await client.post(f"/api/workspaces/{ws['id']}/start")).status_code == 202
                await expect(quota).to_have_text("1 of 2 running", timeout=20_000)
                await wait_state(client, ws["id"], {"running"})
                await client.post(f"/api/workspaces/{ws['id']}/stop")
            await expect(quota).to_have_text("0 of 2 running", timeout=20_000)
        finally:
            await browser.close()
