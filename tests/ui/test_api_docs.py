"""The API docs render in Chromium with every request outside the hub refused (no internet, no CDN), and
the dashboard links to them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import running_hub
from tests.support.services import need
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"


async def test_swagger_ui_renders_offline(tmp_path: Path, sqlite_url: str) -> None:
    if not Path(CHROMIUM).exists():
        need("browser", False, f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    need("browser", importlib.util.find_spec("playwright") is not None, "the playwright package is not installed")
    from playwright.async_api import async_playwright

    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_hub(settings) as hub, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
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
        finally:
            await browser.close()
