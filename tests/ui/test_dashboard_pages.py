"""The dashboard's token page, sign-in return, Open on a stopped workspace, editing a failed one, plain field
errors, the fixed display bugs and the 390 px layout, in Chromium against a real hub (local runtime with the
fake IDE). Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import (
    PASSWORD,
    PHONE,
    login,
    open_page,
    overflowing,
    row,
    small_targets,
)
from tests.support.git_http import make_repo
from tests.support.runtime import fake_ide_command
from tests.support.server import Hub, free_port, running_hub
from tests.support.settings import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


@pytest.fixture(scope="module")
def good_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small local repository (``file://``, allowed for admins on this hub)."""
    return make_repo(
        tmp_path_factory.mktemp("pages-repo"), "good.git", branches={"main": {"README": "hello\n"}}
    ).as_uri()


@pytest.fixture(scope="module")
async def pages_hub(browser_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub running workspaces as local processes; file:// clones allowed for admins."""
    settings = make_settings(
        tmp_path_factory.mktemp("pages-data"),
        database_url=browser_db_url,
        local_ide_command=fake_ide_command(),
        allow_file_git_urls=True,
        start_timeout=30.0,
    )
    async with running_hub(settings) as hub:
        yield hub


async def test_api_tokens_create_once_list_revoke(pages_hub: Hub, page: Any, tmp_path: Path) -> None:
    """A token is created with an expiry, shown once, works as a bearer token, is listed, then revoked."""
    from playwright.async_api import expect

    await pages_hub.new_user("tokie")
    await login(page, pages_hub, "tokie")
    await page.get_by_role("link", name="Tokens").click()
    await expect(page.locator("#tokens-view")).to_be_visible()

    await page.get_by_label("Token name").fill("x" * 101)
    await page.get_by_role("button", name="Create token").click()
    await expect(page.locator("#token-name-error")).to_have_text("Keep the name under 100 characters.")

    await page.get_by_label("Token name").fill("laptop cli")
    await page.get_by_label("Expires").select_option("7")
    await page.get_by_role("button", name="Create token").click()
    value = page.get_by_label("The new token")
    await expect(value).to_be_visible()
    raw = await value.input_value()
    assert len(raw) > 20
    listed = page.locator("#tokens-body tr", has_text="laptop cli")
    await expect(listed).to_have_count(1)
    await expect(listed.locator("td").nth(3)).not_to_have_text("never")
    await page.screenshot(path=str(tmp_path / "tokens.png"), full_page=True)
    async with httpx.AsyncClient(base_url=pages_hub.url, headers={"Authorization": f"Bearer {raw}"}) as client:
        assert (await client.get("/api/auth/me")).json()["username"] == "tokie"

        await page.get_by_role("button", name="Done").click()
        await expect(page.locator("#token-new")).to_be_hidden()
        assert raw not in await page.content()
        await page.reload()
        await expect(page.locator("#tokens-body tr", has_text="laptop cli")).to_have_count(1)
        assert raw not in await page.content()

        await listed.get_by_role("button", name="Revoke laptop cli").click()
        await page.locator("#confirm-ok").click()
        await expect(page.locator("#tokens-body tr", has_text="laptop cli")).to_have_count(0)
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_sign_in_returns_where_the_user_was_going(pages_hub: Hub, page: Any) -> None:
    """``?next=`` on this origin is followed after signing in (and when already signed in); others are not."""
    from playwright.async_api import expect

    await pages_hub.new_user("nexty")
    await page.goto(f"{pages_hub.url}/?next=%2Fapi%2Fauth%2Fme")
    await page.get_by_label("Username").fill("nexty")
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{pages_hub.url}/api/auth/me")
    assert '"username":"nexty"' in (await page.content()).replace(" ", "")
    # Already signed in: a link through the sign-in page goes straight on.
    await page.goto(f"{pages_hub.url}/?next=/api/auth/tokens")
    await page.wait_for_url(f"{pages_hub.url}/api/auth/tokens")
    for hostile in (
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/%09/evil.example",
        "javascript:alert(1)",
    ):
        await page.goto(f"{pages_hub.url}/?next={hostile}")
        await expect(page.locator("#whoami")).to_contain_text("nexty")
        assert page.url.startswith(pages_hub.url), (hostile, page.url)
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Sign in to code-hub")).to_be_visible()
    await page.goto(f"{pages_hub.url}/?next=//evil.example/x")
    await page.get_by_label("Username").fill("nexty")
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#whoami")).to_contain_text("nexty")
    assert page.url.startswith(pages_hub.url)


async def test_open_starts_a_stopped_workspace(pages_hub: Hub, page: Any) -> None:
    """Open is offered on a workspace that is not running (new, then stopped); the new tab starts it and lands in
    the IDE."""
    from playwright.async_api import expect

    await pages_hub.new_user("opener")
    await login(page, pages_hub, "opener")
    await page.get_by_label("Name", exact=True).fill("sleepy")
    await page.get_by_role("button", name="Create").click()
    ws = row(page, "sleepy")
    link = ws.get_by_role("link", name="Open the IDE of sleepy in a new tab (starts it)")
    for state in ("created", "stopped"):
        await expect(ws.locator(".badge")).to_have_text(state)
        await expect(link).to_have_attribute("aria-disabled", "false")
        async with page.context.expect_page() as opened:
            await link.click()
        ide = await opened.value
        await expect(ide.locator("body")).to_contain_text('"method": "GET"', timeout=30_000)
        await ide.close()
        await expect(ws.locator(".badge")).to_have_text("running")
        await ws.get_by_role("button", name="Stop sleepy", exact=True).click()


async def test_failed_clone_edit_and_plain_field_errors(
    pages_hub: Hub, page: Any, good_repo: str, tmp_path: Path
) -> None:
    """A bad repository fails without a stale bar; field errors sit next to their field in words; editing the
    URL of the failed workspace clones it and it starts."""
    from playwright.async_api import expect

    await pages_hub.new_user("editor", admin=True)
    await login(page, pages_hub, "editor")
    form = page.locator("#create-form")
    await form.get_by_label("Name", exact=True).fill("Bad Name!")
    await form.get_by_label("Image").fill("bad image!")
    await form.get_by_role("button", name="Create").click()
    await expect(page.locator("#create-form-name-error")).to_contain_text("Use lower-case letters, digits and hyphens")
    await expect(page.locator("#create-form-image-error")).to_contain_text("Give an image name such as")
    await expect(form.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(".toast")).to_have_count(0)

    await form.get_by_label("Name", exact=True).fill("broken")
    await form.get_by_label("Image").fill("")
    await form.get_by_label("Git URL").fill("nope")
    await form.get_by_role("button", name="Create").click()
    await expect(page.locator("#create-form-git_url-error")).to_contain_text("https://")
    await expect(page.locator("#create-form-name-error")).to_be_hidden()
    await expect(page.locator(".toast")).to_have_count(0)

    await form.get_by_label("Git URL").fill((tmp_path / "missing-repo").as_uri())
    await form.get_by_role("button", name="Create").click()
    ws = row(page, "broken")
    await expect(ws.locator(".badge")).to_have_text("failed")
    await expect(ws.locator(".progress")).to_be_hidden()
    await expect(ws.locator(".phase")).to_be_empty()
    await page.screenshot(path=str(tmp_path / "failed-clone.png"), full_page=True)

    # The same name again: the hub's answer goes under the name, in its words.
    await form.get_by_label("Name", exact=True).fill("broken")
    await form.get_by_label("Git URL").fill("")
    await form.get_by_role("button", name="Create").click()
    await expect(page.locator("#create-form-name-error")).to_contain_text("already have a workspace named")
    page_text = await page.locator("body").inner_text()
    assert "regex" not in page_text and "[a-z0-9]" not in page_text

    await ws.get_by_role("button", name="Edit broken").click()
    dialog = page.locator("#edit")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Repository URL").fill("ftp://example.com/x.git")
    await dialog.get_by_role("button", name="Save").click()
    await expect(page.locator("#edit-form-git_url-error")).to_contain_text("https://")
    await dialog.get_by_label("Branch or tag").fill("main; rm")
    await dialog.get_by_role("button", name="Save").click()
    await expect(page.locator("#edit-form-git_ref-error")).to_contain_text("letters, digits")
    await page.screenshot(path=str(tmp_path / "edit-errors.png"))
    await dialog.get_by_label("Branch or tag").fill("main")
    await dialog.get_by_label("Repository URL").fill(good_repo)
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(ws.locator(".badge")).to_have_text("created")
    await expect(ws.locator(".git")).to_contain_text(good_repo)
    await expect(ws.locator(".reason")).to_be_empty()
    await ws.get_by_role("button", name="Start broken", exact=True).click()
    await expect(ws.locator(".badge")).to_have_text("running")
    await expect(ws.get_by_role("button", name="Edit broken")).to_be_disabled()

    # Stopped: the image can change (it applies at the next start).
    await ws.get_by_role("button", name="Stop broken", exact=True).click()
    await expect(ws.locator(".badge")).to_have_text("stopped")
    await ws.get_by_role("button", name="Edit broken").click()
    await dialog.get_by_label("Image").fill("registry.example.org/team/ide:2")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(ws.locator(".image-col")).to_contain_text("registry.example.org/team/ide:2")
    async with pages_hub.client() as admin:
        ws_id = await ws.get_attribute("data-id")
        assert (await admin.get(f"/api/workspaces/{ws_id}")).json()["image"] == "registry.example.org/team/ide:2"


async def test_details_names_the_server_and_images_break_between_parts(pages_hub: Hub, page: Any) -> None:
    """Details shows the server's name (not its id); a long image name wraps only at / : @."""
    from playwright.async_api import expect

    image = "registry.example-company-internal.com/platform-team/development-environments/code-server:2025.11"
    async with pages_hub.client() as client:
        r = await client.post(
            "/api/admin/servers", json={"name": "rack-7", "docker_url": f"tcp://127.0.0.1:{free_port()}"}
        )
        assert r.status_code == 201, r.text
        server_id = r.json()["id"]
        token = await pages_hub.new_user("placed")
        try:
            async with pages_hub.client(token) as user:
                r = await user.post("/api/workspaces", json={"name": "onrack", "image": image, "server_id": server_id})
                assert r.status_code == 201, r.text
                ws_id = r.json()["id"]
                status = (await user.get(f"/api/workspaces/{ws_id}/status")).json()
                assert status["server_name"] == "rack-7"
            await login(page, pages_hub, "placed")
            await row(page, "onrack").get_by_role("button", name="Show details of onrack").click()
            server = page.locator('#status-list dd[data-key="server"]')
            await expect(server).to_contain_text("rack-7")
            assert server_id not in await server.inner_text()
            split_words = (
                await row(page, "onrack")
                .locator(".image-col span.mono")
                .evaluate(
                    """el => [...el.querySelectorAll('.seg')].filter(n => {
                     const r = document.createRange(); r.selectNodeContents(n);
                     return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1;
                   }).map(n => n.textContent)"""
                )
            )
            assert split_words == [], split_words
        finally:
            async with pages_hub.client(token) as user:
                await user.delete(f"/api/workspaces/{ws_id}")
            await client.delete(f"/api/admin/servers/{server_id}")


async def test_phone_layout_390(pages_hub: Hub, browser: Any, tmp_path: Path) -> None:
    """At 390 px: a one-row header, no sideways scroll, every target at least 24 px, Details scrolled to."""
    from playwright.async_api import expect

    token = await pages_hub.new_user("phone")
    async with pages_hub.client(token) as client:
        for i in range(6):
            assert (await client.post("/api/workspaces", json={"name": f"phone-{i}"})).status_code == 201
    async with open_page(browser, viewport=PHONE, device_scale_factor=2) as page:
        await login(page, pages_hub, "phone")
        await expect(row(page, "phone-0")).to_have_count(1)
        header = await page.locator(".topbar").bounding_box()
        assert header is not None and header["height"] <= 56, header
        assert header["height"] / 844 < 0.07
        await page.screenshot(path=str(tmp_path / "phone-390.png"), full_page=False)
        assert await overflowing(page, 390) == []
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert await small_targets(page) == []
        await row(page, "phone-0").get_by_role("button", name="Show details of phone-0").click()
        await expect(page.locator("#detail-name")).to_have_text("phone-0")
        await page.wait_for_function(
            "() => { const r = document.querySelector('#detail').getBoundingClientRect();"
            " return r.top >= 0 && r.top <= 80; }"
        )
        await page.screenshot(path=str(tmp_path / "phone-390-details.png"), full_page=False)
        await page.get_by_role("link", name="Tokens").click()
        await expect(page.locator("#tokens-view")).to_be_visible()
        assert await small_targets(page) == []
        assert await overflowing(page, 390) == []


async def test_desktop_targets_are_24px(pages_hub: Hub, page: Any) -> None:
    """Every visible button, link button and field on the workspace page is at least 24 px tall."""
    from playwright.async_api import expect

    token = await pages_hub.new_user("sizes")
    async with pages_hub.client(token) as client:
        assert (await client.post("/api/workspaces", json={"name": "sized"})).status_code == 201
    await login(page, pages_hub, "sizes")
    await expect(row(page, "sized")).to_have_count(1)
    assert await small_targets(page) == []


async def test_admin_users_create_role_disable_reset(pages_hub: Hub, page: Any, tmp_path: Path) -> None:
    """Admins create a user (errors in words next to the field), promote, disable, enable and reset passwords;
    the changes hold against the API (a disabled user cannot sign in, the new password works)."""
    from playwright.async_api import expect

    await pages_hub.new_user("boss", admin=True)
    await login(page, pages_hub, "boss")
    await page.get_by_role("link", name="Users").click()
    form = page.locator("#user-form")
    await form.get_by_label("User name").fill("Bad Name!")
    await form.get_by_label("Initial password").fill("short")
    await form.get_by_role("button", name="Create user").click()
    await expect(page.locator("#user-form-username-error")).to_contain_text("a-z, 0-9")
    await form.get_by_label("User name").fill("newbie")
    await form.get_by_role("button", name="Create user").click()
    await expect(page.locator("#user-form-password-error")).to_contain_text("8 to 1024")
    await form.get_by_label("Initial password").fill("first-password-1")
    await form.get_by_role("button", name="Create user").click()
    newbie = page.locator("#users-body tr", has_text="newbie")
    await expect(newbie).to_have_count(1)
    await form.get_by_label("User name").fill("newbie")
    await form.get_by_label("Initial password").fill("first-password-1")
    await form.get_by_role("button", name="Create user").click()
    await expect(page.locator("#user-form-username-error")).to_contain_text("already exists")

    await newbie.get_by_label("Role of newbie").select_option("admin")
    await expect(page.locator(".toast", has_text="newbie updated")).to_have_count(1)
    await newbie.get_by_role("button", name="Disable newbie").click()
    await page.locator("#confirm-ok").click()
    await expect(newbie.locator("td").nth(2)).to_have_text("disabled")
    async with httpx.AsyncClient(base_url=pages_hub.url) as anon:
        r = await anon.post("/api/auth/login", json={"username": "newbie", "password": "first-password-1"})
        assert r.status_code in (401, 403), r.text
    await newbie.get_by_role("button", name="Enable newbie").click()
    await expect(newbie.locator("td").nth(2)).to_have_text("active")
    await newbie.get_by_role("button", name="Reset the password of newbie").click()
    await page.locator("#pw-form").get_by_label("New password").fill("second-password-2")
    await page.locator("#pw-form").get_by_role("button", name="Set password").click()
    await expect(page.locator("#pw-dialog")).to_be_hidden()
    await page.screenshot(path=str(tmp_path / "users.png"), full_page=True)
    async with httpx.AsyncClient(base_url=pages_hub.url) as anon:
        r = await anon.post("/api/auth/login", json={"username": "newbie", "password": "second-password-2"})
        assert r.status_code == 200 and r.json()["user"]["role"] == "admin", r.text
    # the admin's own row cannot demote or disable itself from here
    await expect(page.locator("#users-body tr", has_text="boss").get_by_label("Role of boss")).to_be_disabled()


async def test_users_tab_is_for_admins_only(pages_hub: Hub, page: Any) -> None:
    """A user sees no Users tab, and ``#users`` falls back to the workspaces."""
    from playwright.async_api import expect

    await pages_hub.new_user("plain")
    await login(page, pages_hub, "plain")
    await expect(page.get_by_role("link", name="Users")).to_be_hidden()
    await page.goto(f"{pages_hub.url}/#users")
    await expect(page.locator("#workspaces-view")).to_be_visible()
    await expect(page.locator("#users-view")).to_be_hidden()


async def test_create_with_branch_resources_and_server(pages_hub: Hub, page: Any, good_repo: str) -> None:
    """More options: branch, CPUs, memory and (admins) the server; out-of-bounds resources are refused next
    to the field, in the hub's words."""
    from playwright.async_api import expect

    async with pages_hub.client() as client:
        r = await client.post(
            "/api/admin/servers", json={"name": "rack-9", "docker_url": f"tcp://127.0.0.1:{free_port()}"}
        )
        assert r.status_code == 201, r.text
        server_id = r.json()["id"]
    try:
        await pages_hub.new_user("sizer", admin=True)
        await login(page, pages_hub, "sizer")
        form = page.locator("#create-form")
        await form.get_by_text("More options").click()
        await form.get_by_label("Name", exact=True).fill("roomy")
        await form.get_by_label("CPUs").fill("999")
        await form.get_by_role("button", name="Create").click()
        await expect(page.locator("#create-form-cpu-error")).to_contain_text("cpu must be at most")
        await expect(page.locator(".toast")).to_have_count(0)
        await form.get_by_label("CPUs").fill("-1")
        await form.get_by_role("button", name="Create").click()
        await expect(page.locator("#create-form-cpu-error")).to_have_text("Give a number of CPUs above 0.")
        await form.get_by_label("CPUs").fill("1.5")
        await form.get_by_label("Memory (MiB)").fill("768")
        await form.get_by_label("Git URL").fill(good_repo)
        await form.get_by_label("Branch or tag").fill("main")
        await form.get_by_role("combobox", name="Server").select_option(label="rack-9 (0 running)")
        await form.get_by_role("button", name="Create").click()
        await expect(row(page, "roomy")).to_have_count(1)
        async with pages_hub.client() as client:
            items = (await client.get("/api/workspaces", params={"all": "true", "limit": 200})).json()["items"]
            ws = next(w for w in items if w["name"] == "roomy")
            assert (ws["cpu"], ws["memory_mb"], ws["git_ref"], ws["server_id"]) == (1.5, 768, "main", server_id)
            await client.delete(f"/api/workspaces/{ws['id']}")
    finally:
        async with pages_hub.client() as client:
            await client.delete(f"/api/admin/servers/{server_id}")


async def test_sign_in_page_has_one_password_field(pages_hub: Hub, page: Any) -> None:
    """The admin pages' password fields are built on use and taken away at sign-out: the sign-in form's
    "Password" stays the only one (for password managers, and for tests that find it by its label)."""
    from playwright.async_api import expect

    await pages_hub.new_user("pwcount", admin=True)
    await page.goto(pages_hub.url + "/")
    assert await page.get_by_label("Password").count() == 1
    await login(page, pages_hub, "pwcount")
    await page.get_by_role("link", name="Users").click()
    await expect(page.locator("#user-form")).to_be_visible()
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Sign in to code-hub")).to_be_visible()
    assert await page.get_by_label("Password").count() == 1


async def test_admin_adds_and_tests_a_kubernetes_namespace(pages_hub: Hub, page: Any, kubeconfig: str) -> None:
    """Servers: the Kubernetes kind shows its own fields; a bad kubeconfig is refused next to its field; the
    added namespace is listed with its kind and tested against the test cluster."""
    from playwright.async_api import expect

    await pages_hub.new_user("kuber", admin=True)
    await login(page, pages_hub, "kuber")
    await page.get_by_role("link", name="Servers").click()
    form = page.locator("#server-form")
    await form.get_by_label("Kind").select_option("kubernetes")
    await expect(form.get_by_label("Docker URL")).to_be_hidden()
    await form.get_by_label("Server name").fill("cluster-x")
    await form.get_by_label("Kubeconfig").fill("/nonexistent/kubeconfig")
    await form.get_by_label("Namespace", exact=True).fill("default")
    await form.get_by_role("button", name="Add server").click()
    await expect(page.locator("#server-form-kubeconfig-error")).to_contain_text("not a file the hub can read")
    await form.get_by_label("Kubeconfig").fill(kubeconfig)
    await form.get_by_role("button", name="Add server").click()
    server = page.locator("#servers-body tr", has_text="cluster-x")
    await expect(server).to_contain_text("kubernetes")
    await expect(server).to_contain_text(f"default · {kubeconfig}")
    await server.get_by_role("button", name="Test cluster-x").click()
    await expect(server.locator(".check")).to_contain_text("ok · Kubernetes v1.20.2 · 1 node")
    await server.get_by_role("button", name="Remove cluster-x").click()
    await page.locator("#confirm-ok").click()
    await expect(server).to_have_count(0)
