"""The dashboard's Groups page in headless Chromium: an admin creates a local group and adds a member by name;
a group synced from the identity provider is listed read-only; a non-admin has no Groups tab."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app import db
from app.services.auth.identities import ensure_groups
from tests.support.browser import PASSWORD, chromium, login
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture
async def groups_hub(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub with one group synced from the provider (as a sign-in makes it)."""
    settings = make_settings(tmp_path / "data", database_url=sqlite_url)
    engine = db.create_engine(settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            await ensure_groups(session, ("idp-team",), "oidc")
            await session.commit()
    finally:
        await engine.dispose()
    async with running_hub(settings) as hub:
        yield hub


async def test_admin_manages_groups_in_the_dashboard(groups_hub: Hub) -> None:
    from playwright.async_api import expect

    await groups_hub.new_user("grp-admin", admin=True, password=PASSWORD)
    await groups_hub.new_user("grp-dana", password=PASSWORD)
    async with chromium() as browser:
        page = await browser.new_page()
        await login(page, groups_hub, "grp-admin", "/#groups")
        await page.get_by_role("link", name="Groups").click()
        synced = page.locator("#groups-body tr", has_text="idp-team")
        await expect(synced).to_contain_text("read-only")
        await expect(synced.get_by_role("button", name="Delete idp-team")).to_have_count(0)

        await page.get_by_label("New local group").fill("designers")
        await page.get_by_role("button", name="Create").click()
        row = page.locator("#groups-body tr", has_text="designers")
        await expect(row.locator("td.num")).to_have_text("0")
        await row.get_by_role("button", name="Members of designers").click()
        await page.get_by_label("User name or id").fill("grp-dana")
        await page.get_by_role("button", name="Add member").click()
        await expect(row.locator("td.num")).to_have_text("1")
        await expect(page.locator("#group-members-list")).to_contain_text("grp-dana")

        await synced.get_by_role("button", name="Members of idp-team").click()
        await expect(page.locator("#group-add-member")).to_be_hidden()
        await expect(page.locator("#group-members-note")).to_contain_text("identity provider")
    async with groups_hub.client() as admin:
        groups = {g["name"]: g for g in (await admin.get("/api/admin/groups")).json()}
        assert groups["designers"]["member_count"] == 1 and groups["designers"]["source"] == "local"


async def test_non_admins_have_no_groups_tab(groups_hub: Hub) -> None:
    from playwright.async_api import expect

    await groups_hub.new_user("grp-eve", password=PASSWORD)
    async with chromium() as browser:
        page = await browser.new_page()
        await login(page, groups_hub, "grp-eve", "/#groups")
        await expect(page.locator("#workspaces-view")).to_be_visible()
        await expect(page.locator("#groups-view")).to_be_hidden()
        await expect(page.get_by_role("link", name="Groups")).to_be_hidden()
