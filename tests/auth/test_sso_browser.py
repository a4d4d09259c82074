"""Single sign-on in headless Chromium against a real OpenID provider (node-oidc-provider).

The dashboard offers "Sign in with Test IdP"; the browser goes to the provider, signs in on its form, comes
back through the hub's callback to the page it started on, signed in as an admin (from the provider's
groups). Logout ends the hub session and takes the browser through the provider's end-session page back to
the hub's sign-in. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import artifact, chromium, need_browser
from tests.support.databases import fresh_database
from tests.support.oidc_provider import sso_hub

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database for the test's hub."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


async def test_sign_in_with_the_provider_and_out_again_in_chromium(tmp_path: Path, db_url: str) -> None:
    need_browser()
    from playwright.async_api import expect

    async with sso_hub(tmp_path, db_url, oidc_admin_groups=("hub-admins",)) as hub, chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.url}/#audit")
        button = page.locator("#sso-login")
        await expect(button).to_have_text("Sign in with Test IdP")
        await expect(page.locator("#login-username")).to_be_visible()  # the password form stays beside it
        await page.screenshot(path=str(artifact("sso-sign-in.png")))
        await button.click()

        await page.wait_for_url(f"{hub.provider.issuer}/interaction/**")
        await page.fill("#idp-username", "alice")
        await page.fill("#idp-password", "alice-pass")
        await page.click("#idp-submit")

        await page.wait_for_url(f"{hub.url}/#audit")
        await expect(page.locator("#whoami")).to_have_text("alice (admin)")
        await page.screenshot(path=str(artifact("sso-signed-in.png")))
        cookies = {c["name"]: c for c in await page.context.cookies(hub.url)}
        assert cookies["codehub_session"]["httpOnly"]
        assert "codehub_oidc" not in cookies  # the sign-in's own cookie ends with it

        await page.click("#logout")
        await page.wait_for_url(f"{hub.provider.issuer}/session/end**")
        await page.click("button[name=logout]")
        await page.wait_for_url(f"{hub.url}/**")
        await expect(page.locator("#sso-login")).to_be_visible()
        await expect(page.locator("#whoami")).to_be_hidden()
        cookies = {c["name"]: c for c in await page.context.cookies(hub.url)}
        assert "codehub_session" not in cookies


async def test_with_password_sign_in_off_the_dashboard_offers_only_the_provider(tmp_path: Path, db_url: str) -> None:
    need_browser()
    from playwright.async_api import expect

    async with sso_hub(tmp_path, db_url, password_login=False) as hub, chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.url}/?next=/%23audit")  # as the relay's sign-in page links here
        await expect(page.locator("#sso-login")).to_be_visible()
        await expect(page.locator("#login-username")).to_be_hidden()
        await expect(page.locator("#login-submit")).to_be_hidden()
        await page.screenshot(path=str(artifact("sso-only.png")))
        await page.click("#sso-login")
        await page.wait_for_url(f"{hub.provider.issuer}/interaction/**")
        await page.fill("#idp-username", "bob")
        await page.fill("#idp-password", "wrong-password")
        await page.click("#idp-submit")
        await expect(page.locator("#error")).to_be_visible()  # the provider's own refusal
        await page.fill("#idp-username", "bob")
        await page.fill("#idp-password", "bob-pass")
        await page.click("#idp-submit")
        await page.wait_for_url(f"{hub.url}/#audit")
        await expect(page.locator("#whoami")).to_have_text("bob")
