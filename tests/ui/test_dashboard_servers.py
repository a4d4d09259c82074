"""The dashboard's Servers page in Chromium against a real hub: an admin adds, edits, tests, drains and removes
Docker servers, with field errors in words next to the field, on a desktop and at 390 px. The servers are
engines nobody runs (a free loopback port): what the page does must not depend on one answering. Screenshots
go to the test's tmp dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import PHONE, login, open_page, overflowing, small_targets
from tests.support.runtime import remove_hub_containers
from tests.support.server import Hub, free_port, running_hub
from tests.support.settings import docker_settings, make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture(scope="module")
async def servers_hub(browser_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub with one admin (``srv-admin``) who signs in through the form."""
    settings = make_settings(tmp_path_factory.mktemp("servers-ui-data"), database_url=browser_db_url)
    async with running_hub(settings) as hub:
        await hub.new_user("srv-admin", admin=True)
        yield hub


async def register(hub: Hub, name: str, **fields: Any) -> dict[str, Any]:
    """A server whose engine does not answer, registered through the API."""
    async with hub.client() as admin:
        body = {"name": name, "docker_url": f"tcp://127.0.0.1:{free_port()}", **fields}
        r = await admin.post("/api/admin/servers", json=body)
        assert r.status_code == 201, r.text
        server: dict[str, Any] = r.json()
        return server


async def listed(hub: Hub, server_id: str) -> dict[str, Any]:
    """The server as the API lists it now."""
    async with hub.client() as admin:
        server: dict[str, Any] = next(s for s in (await admin.get("/api/admin/servers")).json() if s["id"] == server_id)
        return server


async def open_servers(page: Any, hub: Hub) -> None:
    """Sign in as the admin and open the Servers page."""
    from playwright.async_api import expect

    await login(page, hub, "srv-admin")
    await page.get_by_role("link", name="Servers").click()
    await expect(page.locator("#servers-view")).to_be_visible()


def server_row(page: Any, name: str) -> Any:
    """The Servers table's row of the server named ``name``."""
    return page.locator("#servers-body tr", has=page.get_by_text(name, exact=True))


async def test_admin_adds_tests_and_removes_a_server(servers_hub: Hub, page: Any) -> None:
    """Servers: add (a bad URL is refused next to the field), test (nothing listens: failed), remove."""
    from playwright.async_api import expect

    await open_servers(page, servers_hub)
    form = page.locator("#server-form")
    await form.get_by_label("Server name").fill("rack-x")
    await form.get_by_label("Docker URL").fill("http://nope")
    await form.get_by_role("button", name="Add server").click()
    await expect(page.locator("#server-form-docker_url-error")).to_contain_text("tcp://host:port")
    await form.get_by_label("Server name").fill("-bad")
    await form.get_by_label("Docker URL").fill(f"tcp://127.0.0.1:{free_port()}")
    await form.get_by_role("button", name="Add server").click()
    await expect(page.locator("#server-form-name-error")).to_contain_text("starting with a letter or digit")
    await form.get_by_label("Server name").fill("rack-x")
    await form.get_by_role("button", name="Add server").click()
    server = server_row(page, "rack-x")
    await expect(server).to_have_count(1)
    await expect(server.locator(".badge")).to_have_text("active")
    await server.get_by_role("button", name="Test rack-x").click()
    await expect(server.locator(".check")).to_contain_text("failed")
    await server.get_by_role("button", name="Remove rack-x").click()
    await page.locator("#confirm-ok").click()
    await expect(server).to_have_count(0)


async def test_admin_edits_a_server_with_errors_next_to_the_field(servers_hub: Hub, page: Any, tmp_path: Path) -> None:
    """Edit: the dialog holds the server's values; what does not fit (the browser's checks and the hub's 409
    for a taken name) is said in words under its field; a good edit is saved, listed and audited."""
    from playwright.async_api import expect

    one = await register(servers_hub, "rack-e", labels={"zone": "a"}, max_workspaces=5)
    await register(servers_hub, "rack-taken")
    await open_servers(page, servers_hub)
    row = server_row(page, "rack-e")
    await expect(row).to_contain_text("zone=a")
    await row.get_by_role("button", name="Edit rack-e").click()
    dialog = page.locator("#server-edit")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading")).to_have_text("Edit rack-e")
    await expect(dialog.get_by_label("Server name")).to_have_value("rack-e")
    await expect(dialog.get_by_label("Labels")).to_have_value("zone=a")
    await expect(dialog.get_by_label("Max workspaces")).to_have_value("5")
    await expect(dialog.get_by_label("Enabled")).to_be_checked()

    save = dialog.get_by_role("button", name="Save")
    await dialog.get_by_label("Server name").fill("-bad name")
    await dialog.get_by_label("Public host").fill("a b")
    await save.click()
    await expect(page.locator("#server-edit-form-name-error")).to_have_text(
        "Use letters, digits, '.', '_' and '-' (1\N{EN DASH}64 characters), starting with a letter or digit."
    )
    await expect(page.locator("#server-edit-form-public_host-error")).to_contain_text("host name or IP address")
    await expect(dialog.get_by_label("Server name")).to_have_attribute("aria-invalid", "true")
    await dialog.get_by_label("Server name").fill("rack-e")
    await dialog.get_by_label("Public host").fill("")
    await dialog.get_by_label("Labels").fill("zone")
    await save.click()
    await expect(page.locator("#server-edit-form-labels-error")).to_contain_text("key=value")
    await expect(page.locator("#server-edit-form-name-error")).to_be_hidden()
    await dialog.get_by_label("Labels").fill("zone=a")
    await dialog.get_by_label("Max workspaces").fill("0")
    await save.click()
    await expect(page.locator("#server-edit-form-max_workspaces-error")).to_have_text(
        "Give a whole number from 1 to 100,000."
    )
    await dialog.get_by_label("Max workspaces").fill("5")
    await dialog.get_by_label("Server name").fill("rack-taken")
    await save.click()  # the hub's 409, in its words, under the name
    await expect(page.locator("#server-edit-form-name-error")).to_contain_text("a server named 'rack-taken' exists")
    await page.screenshot(path=str(tmp_path / "server-edit-errors.png"))
    assert await page.locator("#server-edit .field-error:visible").count() == 1

    await dialog.get_by_label("Server name").fill("rack-e2")
    await dialog.get_by_label("Labels").fill("zone=b, gpu=a100")
    await dialog.get_by_label("Public host").fill("10.0.0.9")
    await dialog.get_by_label("Max workspaces").fill("7")
    await save.click()
    await expect(dialog).to_be_hidden()
    row = server_row(page, "rack-e2")
    await expect(row).to_contain_text("zone=b, gpu=a100")
    await expect(row).to_contain_text("10.0.0.9")
    await expect(row.locator("td.num").nth(2)).to_have_text("7")
    edited = await listed(servers_hub, one["id"])
    assert (edited["name"], edited["labels"], edited["public_host"], edited["max_workspaces"]) == (
        "rack-e2",
        {"zone": "b", "gpu": "a100"},
        "10.0.0.9",
        7,
    )
    await page.screenshot(path=str(tmp_path / "server-edited.png"), full_page=True)

    await row.get_by_role("button", name="Edit rack-e2").click()
    await dialog.get_by_label("Public host").fill("")
    await dialog.get_by_label("Enabled").uncheck()
    await save.click()
    await expect(server_row(page, "rack-e2").locator(".badge")).to_have_text("disabled")
    edited = await listed(servers_hub, one["id"])
    assert edited["public_host"] is None and edited["enabled"] is False
    async with servers_hub.client() as admin:
        r = await admin.get("/api/admin/audit", params={"action": "server.edit"})
        details = [rec["details"] for rec in r.json()["items"] if rec["target"] == "rack-e2"]
    assert {"public_host": None, "enabled": False} in details
    first = {"name": "rack-e2", "labels": {"zone": "b", "gpu": "a100"}, "public_host": "10.0.0.9", "max_workspaces": 7}
    assert first in details


async def test_admin_drains_and_undrains_a_server(servers_hub: Hub, page: Any, tmp_path: Path) -> None:
    """Drain (confirmed): the row says draining, the create form stops offering the server and the hub
    refuses new workspaces on it; Undrain brings it back."""
    from playwright.async_api import expect

    server = await register(servers_hub, "rack-d")
    await open_servers(page, servers_hub)
    row = server_row(page, "rack-d")
    await row.get_by_role("button", name="Drain rack-d").click()
    await expect(page.locator("#confirm-title")).to_have_text("Drain rack-d?")
    await page.locator("#confirm-ok").click()
    await expect(row.locator(".badge")).to_have_text("draining")
    await expect(row.get_by_role("button", name="Undrain rack-d")).to_be_visible()
    await page.screenshot(path=str(tmp_path / "server-draining.png"), full_page=True)
    assert (await listed(servers_hub, server["id"]))["draining"] is True
    async with servers_hub.client() as admin:
        r = await admin.post("/api/workspaces", json={"name": "on-drained", "server_id": server["id"]})
        assert r.status_code == 422 and r.json()["error"] == "server_draining", r.text

    choice = page.locator("#create-server option")
    await page.get_by_role("link", name="Workspaces").click()
    await page.locator("#create-more summary").click()
    await expect(choice.first).to_have_text("least loaded")
    assert "rack-d (0 running)" not in await choice.all_inner_texts()

    await page.get_by_role("link", name="Servers").click()
    await row.get_by_role("button", name="Undrain rack-d").click()
    await expect(row.locator(".badge")).to_have_text("active")
    assert (await listed(servers_hub, server["id"]))["draining"] is False
    await page.get_by_role("link", name="Workspaces").click()
    await page.locator("#create-more summary").click()  # closed …
    await page.locator("#create-more summary").click()  # … and opened again: the choice is read anew
    await expect(page.locator("#create-server option", has_text="rack-d (0 running)")).to_have_count(1)


async def test_servers_page_at_390(servers_hub: Hub, browser: Any, tmp_path: Path) -> None:
    """At 390 px: no sideways scroll outside the table, every target at least 24 px, the edit dialog fits."""
    from playwright.async_api import expect

    await register(servers_hub, "rack-phone", labels={"zone": "phone"})
    async with open_page(browser, viewport=PHONE, device_scale_factor=2, shot=tmp_path / "final.png") as page:
        await open_servers(page, servers_hub)
        row = server_row(page, "rack-phone")
        await expect(row).to_have_count(1)
        await page.screenshot(path=str(tmp_path / "servers-390.png"), full_page=False)
        assert await overflowing(page, 390) == []
        assert await small_targets(page) == []
        await row.get_by_role("button", name="Edit rack-phone").scroll_into_view_if_needed()
        for button in ("Test", "Edit", "Drain", "Remove"):  # every action in reach without scrolling sideways
            box = await row.get_by_role("button", name=f"{button} rack-phone").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (button, box)
        await row.get_by_role("button", name="Edit rack-phone").click()
        dialog = page.locator("#server-edit")
        await expect(dialog).to_be_visible()
        box = await dialog.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert await small_targets(page, "#server-edit button:visible, #server-edit input:visible") == []
        await page.screenshot(path=str(tmp_path / "servers-390-edit.png"), full_page=False)
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()


async def test_a_server_running_workspaces_drains_but_is_not_disabled(
    sqlite_url: str, tmp_path: Path, browser: Any
) -> None:
    """On a real engine running a workspace: Drain keeps it running; unchecking Enabled is refused next to the
    field with what to do first (the hub's 409 ``server_busy``)."""
    from playwright.async_api import expect

    settings = docker_settings(tmp_path / "data", sqlite_url)
    try:
        async with running_hub(settings) as hub:
            await hub.new_user("srv-admin", admin=True)
            async with hub.client() as admin:
                ws = (await admin.post("/api/workspaces", json={"name": "busy"})).json()
                r = await admin.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
                assert r.json()["state"] == "running", r.text
                server = next(s for s in (await admin.get("/api/admin/servers")).json() if s["is_default"])
            async with open_page(browser, shot=tmp_path / "final.png") as page:
                await open_servers(page, hub)
                row = server_row(page, server["name"])
                await expect(row.locator("td.num").first).to_have_text("1")
                await row.get_by_role("button", name=f"Drain {server['name']}").click()
                await page.locator("#confirm-ok").click()
                await expect(row.locator(".badge")).to_have_text("draining")
                async with hub.client() as admin:
                    assert (await admin.get(f"/api/workspaces/{ws['id']}")).json()["state"] == "running"

                await row.get_by_role("button", name=f"Edit {server['name']}").click()
                dialog = page.locator("#server-edit")
                await dialog.get_by_label("Enabled").uncheck()
                await dialog.get_by_role("button", name="Save").click()
                error = page.locator("#server-edit-form-enabled-error")
                await expect(error).to_contain_text("drain it and stop or move them")
                await page.screenshot(path=str(tmp_path / "server-busy.png"))
                await dialog.get_by_role("button", name="Cancel").click()
                await row.get_by_role("button", name=f"Undrain {server['name']}").click()
                await expect(row.locator(".badge")).to_have_text("active")
            async with hub.client() as admin:
                after = next(s for s in (await admin.get("/api/admin/servers")).json() if s["id"] == server["id"])
                assert after["enabled"] is True and after["draining"] is False
                assert (await admin.delete(f"/api/workspaces/{ws['id']}")).status_code == 204
    finally:
        remove_hub_containers(settings.hub_id)
