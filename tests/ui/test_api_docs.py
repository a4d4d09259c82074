"""The API docs render in Chromium with every request outside the hub refused (no internet, no CDN), and
the dashboard links to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import chromium, need_browser
from tests.support.server import running_hub
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


async def test_swagger_ui_renders_offline(tmp_path: Path, sqlite_url: str) -> None:
    need_browser()
    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_hub(settings) as hub, chromium() as browser:
        page = await browser.new_page()
        outside: list[str] = []

        async def only_the_hub(route: Any) -> None:
            if route.request.url.startswith(hub.url):
                await route.continue_()
            else:
                outside.append(route.request.url)
                await route.abort()

        await page.route("**/*", only_the_hub)
        await page.goto(f"{hub.url}/")
        assert await page.locator("#api-docs").get_attribute("href") == "/schema"
        await page.goto(f"{hub.url}/schema")
        await page.locator(".swagger-ui .opblock").first.wait_for(timeout=20_000)
        assert await page.locator(".swagger-ui .opblock").count() > 30
        await page.locator(".swagger-ui .authorize").first.wait_for()  # the bearer scheme is offered
        assert outside == []
