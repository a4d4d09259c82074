"""Chromium for UI tests: Debian's /usr/bin/chromium driven by Playwright's async API, and page helpers."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.support.server import Hub
from tests.support.services import need

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "password-123"
TIMEOUT_MS = 20_000
DESKTOP = {"width": 1360, "height": 900}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def artifact(name: str) -> Path:
    """Where a screenshot or log named ``name`` goes under ``test-artifacts/`` (gitignored), the folder made."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def need_browser() -> None:
    """Skip (or fail when CODEHUB_TEST_REQUIRE names "browser") without Chromium or Playwright."""
    if not Path(CHROMIUM).exists():
        need("browser", False, f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    need("browser", importlib.util.find_spec("playwright") is not None, "the playwright package is not installed")


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (Playwright's ``Browser``)."""
    from playwright.async_api import async_playwright, expect

    need_browser()
    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def open_page(
    browser: Any,
    *,
    shot: Path | None = None,
    console: Path | None = None,
    viewport: dict[str, int] = DESKTOP,
    **options: Any,
) -> AsyncIterator[Any]:
    """A fresh context (``viewport`` and Playwright's other context ``options``) and page of ``browser``.
    Uncaught page errors fail the test when the block ends; whatever happens, a last full-page screenshot goes
    to ``shot`` and the console's errors to ``console`` (when given)."""
    context = await browser.new_context(viewport=viewport, **options)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = PageErrors(page)
    try:
        yield page
        assert not errors.uncaught, f"uncaught errors in the page: {errors.uncaught}"
    finally:
        if shot is not None:
            await page.screenshot(path=str(shot), full_page=True)
        if console is not None:
            console.write_text("\n".join(errors.console))
        await context.close()


class PageErrors:
    """Uncaught exceptions and console errors of a page (uncaught ones fail the test)."""

    def __init__(self, page: Any) -> None:
        self.uncaught: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.uncaught.append(str(exc)))
        page.on("console", lambda msg: self.console.append(msg.text) if msg.type == "error" else None)


async def login(page: Any, hub: Hub, username: str, path: str = "/") -> None:
    """Open the dashboard (at ``path``) and sign in through the form."""
    from playwright.async_api import expect

    await page.goto(hub.url + path)
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#whoami")).to_contain_text(username)


def row(page: Any, name: str) -> Any:
    """The dashboard's table row of the workspace named ``name``."""
    return page.locator("#ws-body tr", has=page.get_by_role("button", name=f"Show details of {name}", exact=True))


async def small_targets(page: Any, selector: str = "button:visible, a.button:visible, input:visible") -> list[str]:
    """Visible controls less than 24 px tall (WCAG 2.2 target size), as ``text (height)``."""
    return await page.eval_on_selector_all(
        selector,
        """els => els.filter(e => e.getBoundingClientRect().height > 0 && e.getBoundingClientRect().height < 24
                           && !e.closest('[hidden]') && e.type !== 'checkbox')
                  .map(e => `${(e.textContent || e.name || e.id).trim()} (${e.getBoundingClientRect().height}px)`)""",
    )


async def overflowing(page: Any, width: int) -> list[str]:
    """Elements whose right edge passes ``width`` (what makes a page scroll sideways)."""
    return await page.evaluate(
        """w => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 0.5
                 && !e.closest('[hidden]') && e.getClientRects().length
                 && !(e.parentElement && e.parentElement.closest('.table-wrap, .tabs, .logs, .xterm')))
               .map(e => `${e.tagName.toLowerCase()}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`)
               .slice(0, 8)""",
        width,
    )
