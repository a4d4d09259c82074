"""The dashboard's quota line ("1 of 2 running") in headless Chromium, following lifecycle events live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.browser import PASSWORD, chromium, login
from tests.support.lifecycle import create, wait_state
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture
async def quota_hub(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub with the fake IDE and a default of 2 running workspaces per user."""
    settings = make_settings(
        tmp_path / "data", database_url=sqlite_url, local_ide_command=fake_ide_command(), quota_running=2
    )
    async with running_hub(settings) as hub:
        yield hub


async def test_the_quota_line_follows_starts_and_stops(quota_hub: Hub) -> None:
    from playwright.async_api import expect

    token = await quota_hub.new_user("quota-ui", password=PASSWORD)
    async with quota_hub.client(token) as client:
        ws = await create(client, "one")
    async with chromium() as browser:
        page = await browser.new_page()
        await login(page, quota_hub, "quota-ui")
        quota = page.locator("#quota")
        await expect(quota).to_have_text("0 of 2 running", timeout=20_000)
        async with quota_hub.client(token) as client:
            assert (await client.post(f"/api/workspaces/{ws['id']}/start")).status_code == 202
            await expect(quota).to_have_text("1 of 2 running", timeout=20_000)
            await wait_state(client, ws["id"], {"running"})
            await client.post(f"/api/workspaces/{ws['id']}/stop")
        await expect(quota).to_have_text("0 of 2 running", timeout=20_000)
