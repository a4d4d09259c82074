"""The Sharing section of a workspace's details in headless Chromium: in subdomain mode its owner sees the
grants, shares with a user and with a group by name (``use`` or ``view``) and revokes; a name that does not
exist is refused with the reason; a grantee does not manage the owner's sharing. In path mode the section says
why sharing is off and offers no form."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.factory import create_app
from tests.support.browser import PASSWORD, login, row
from tests.support.databases import fresh_database
from tests.support.server import Hub, admin_token, free_port, running_hub, serve_asgi
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

DOMAIN = "ws.localhost"


@pytest.fixture(scope="module")
async def sharing_hub(browser_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A subdomain-mode hub (sharing on)."""
    port = free_port()
    settings = make_settings(
        tmp_path_factory.mktemp("share-data"),
        database_url=browser_db_url,
        runtime="local",
        public_url=f"http://127.0.0.1:{port}",
        workspace_domain=DOMAIN,
    )
    token = await admin_token(settings)
    async with serve_asgi(create_app(settings), port=port) as url:
        yield Hub(url, settings, token)


async def _workspace(hub: Hub, token: str, name: str) -> str:
    async with hub.client(token) as client:
        r = await client.post("/api/workspaces", json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


async def _open_details(page: Any, hub: Hub, user: str, workspace: str) -> None:
    await login(page, hub, user)
    await row(page, workspace).get_by_role("button", name=f"Show details of {workspace}", exact=True).click()


async def test_the_owner_shares_and_revokes_by_name(sharing_hub: Hub, page: Any) -> None:
    from playwright.async_api import expect

    hub = sharing_hub
    alice = await hub.new_user("sh-alice", password=PASSWORD)
    await hub.new_user("sh-bob", password=PASSWORD)
    async with hub.client() as admin:
        r = await admin.post("/api/admin/groups", json={"name": "sh-team"})
        assert r.status_code == 201, r.text
    ws = await _workspace(hub, alice, "shared-ws")

    await _open_details(page, hub, "sh-alice", "shared-ws")
    pane = page.locator("#share-pane")
    await expect(pane).to_be_visible()
    await expect(page.locator("#share-list")).to_contain_text("Not shared with anyone.")

    form = page.get_by_role("form", name="Share this workspace")
    await form.get_by_label("User or group name").fill("sh-bob")
    await form.get_by_label("Access").select_option("use")
    await form.get_by_role("button", name="Share").click()
    bob = page.locator("#share-list li", has_text="sh-bob")
    await expect(bob).to_contain_text("use")

    await form.get_by_label("Share with").select_option("group")
    await form.get_by_label("User or group name").fill("sh-team")
    await form.get_by_label("Access").select_option("view")
    await form.get_by_role("button", name="Share").click()
    await expect(page.locator("#share-list li", has_text="sh-team")).to_contain_text("view")

    await form.get_by_label("Share with").select_option("user")
    await form.get_by_label("User or group name").fill("nobody-here")
    await form.get_by_role("button", name="Share").click()
    await expect(page.locator(".toast").last).to_contain_text("no user named")

    await bob.get_by_role("button", name="Revoke sh-bob").click()
    await page.locator("#confirm").get_by_role("button", name="Revoke").click()
    await expect(bob).to_have_count(0)
    async with hub.client(alice) as client:
        grants = (await client.get(f"/api/workspaces/{ws}/grants")).json()["grants"]
    assert [(g["subject_kind"], g["subject_name"], g["level"]) for g in grants] == [("group", "sh-team", "view")]


async def test_a_grantee_does_not_manage_the_owners_sharing(sharing_hub: Hub, page: Any) -> None:
    from playwright.async_api import expect

    hub = sharing_hub
    owner = await hub.new_user("sh-owner", password=PASSWORD)
    await hub.new_user("sh-guest", password=PASSWORD)
    ws = await _workspace(hub, owner, "owners-ws")
    async with hub.client(owner) as client:
        body = {"subject_kind": "user", "subject_name": "sh-guest", "level": "view"}
        assert (await client.post(f"/api/workspaces/{ws}/grants", json=body)).status_code == 201
    await login(page, hub, "sh-guest")
    await page.evaluate(f"window.codehub.select({ws!r})")
    await expect(page.locator("#detail-body")).to_be_visible()
    await expect(page.locator("#share-pane")).to_be_hidden()


@pytest.fixture
def path_db_url(tmp_path: Path) -> Iterator[str]:
    """A database of its own for the path-mode hub."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


async def test_path_mode_explains_why_there_is_no_sharing(path_db_url: str, tmp_path: Path, page: Any) -> None:
    from playwright.async_api import expect

    settings = make_settings(tmp_path / "data", database_url=path_db_url, runtime="local")
    async with running_hub(settings) as hub:
        token = await hub.new_user("sh-path", password=PASSWORD)
        await _workspace(hub, token, "path-ws")
        await _open_details(page, hub, "sh-path", "path-ws")
        await expect(page.locator("#share-note")).to_contain_text("CODEHUB_WORKSPACE_DOMAIN")
        await expect(page.get_by_role("form", name="Share this workspace")).to_be_hidden()
