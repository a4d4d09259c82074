"""The create form's template choice in Chromium against a real hub: only templates the user may use are
offered, the resource fields take the chosen template's bounds, and the hub's refusal of a value outside them
(here: a template narrowed after the form loaded) is shown next to the field.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import login
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, running_hub
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture(scope="module")
async def tpl_hub(browser_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub running workspaces as local processes."""
    settings = make_settings(
        tmp_path_factory.mktemp("tpl-ui-data"), database_url=browser_db_url, local_ide_command=fake_ide_command()
    )
    async with running_hub(settings) as hub:
        yield hub


async def test_create_from_template_within_bounds(tpl_hub: Hub, page: Any, tmp_path: Path) -> None:
    """Template choice, bounds on the inputs, the browser's and the hub's refusals next to the field."""
    from playwright.async_api import expect

    suffix = secrets.token_hex(3)
    async with tpl_hub.client() as admin:
        r = await admin.post(
            "/api/admin/templates",
            json={
                "name": f"small-{suffix}",
                "image": "example.org/small-ide:1",
                "default_cpu": 1,
                "max_cpu": 2,
                "default_memory_mb": 512,
                "max_memory_mb": 1024,
            },
        )
        assert r.status_code == 201, r.text
        small = r.json()
        group = (await admin.post("/api/admin/groups", json={"name": f"staff-{suffix}"})).json()
        r = await admin.post(
            "/api/admin/templates",
            json={"name": f"staff-{suffix}", "image": "example.org/staff-ide:1", "allowed_groups": [group["id"]]},
        )
        assert r.status_code == 201, r.text

    await tpl_hub.new_user(f"tplu-{suffix}")
    await login(page, tpl_hub, f"tplu-{suffix}")
    form = page.locator("#create-form")
    choice = form.get_by_label("Template")
    await expect(choice.locator("option", has_text=f"small-{suffix}")).to_have_count(1)
    await expect(choice.locator("option", has_text=f"staff-{suffix}")).to_have_count(0)

    await choice.select_option(label=f"small-{suffix}")
    await expect(form.get_by_label("Image")).to_be_disabled()
    await expect(form.get_by_label("Image")).to_have_attribute("placeholder", "example.org/small-ide:1")
    await page.locator("#create-more summary").click()
    cpu = form.get_by_label("CPUs")
    memory = form.get_by_label("Memory (MiB)")
    assert await cpu.get_attribute("max") == "2"
    assert await memory.get_attribute("max") == "1024"
    await expect(cpu).to_have_attribute("placeholder", "1 (up to 2)")

    await form.get_by_label("Name").fill("from-template")
    await cpu.fill("3")
    await memory.fill("2048")
    await form.get_by_role("button", name="Create").click()
    await expect(page.locator("#create-form-cpu-error")).to_have_text("This template allows 0.1 to 2 CPUs.")
    await expect(page.locator("#create-form-memory_mb-error")).to_have_text("This template allows 64 to 1024 MiB.")

    async with tpl_hub.client() as admin:  # narrowed after the form loaded: the hub's 422 is what the user sees
        r = await admin.patch(f"/api/admin/templates/{small['id']}", json={"max_cpu": 1})
        assert r.status_code == 200, r.text
    await cpu.fill("2")
    await memory.fill("1024")
    await form.get_by_role("button", name="Create").click()
    await expect(page.locator("#create-form-cpu-error")).to_contain_text("this template allows at most 1 CPUs")
    await expect(cpu).to_have_attribute("aria-invalid", "true")
    await page.screenshot(path=str(tmp_path / "template-bounds.png"), full_page=True)

    await cpu.fill("1")
    await form.get_by_role("button", name="Create").click()
    await expect(page.locator("#ws-body tr", has_text="from-template")).to_have_count(1)
    await expect(page.locator("#create-form-cpu-error")).to_be_hidden()
    await expect(choice).to_have_value(small["id"])
    async with tpl_hub.client() as admin:
        listed = (await admin.get("/api/workspaces", params={"all": "true"})).json()
    items = listed if isinstance(listed, list) else listed["items"]
    ws = next(w for w in items if w["name"] == "from-template")
    assert ws["template_id"] == small["id"]
    assert ws["cpu"] == 1
    assert ws["memory_mb"] == 1024
