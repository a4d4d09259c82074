"""An admin cannot lock the hub out of administration: not by disabling or demoting themselves, and nobody
can disable or demote the last enabled admin (409, nothing changed)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.support.server import running_hub
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


async def test_admins_cannot_remove_their_own_or_the_last_admin_role(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url)
    async with running_hub(settings) as hub, hub.client() as admin:
        me = (await admin.get("/api/auth/me")).json()
        for change in ({"disabled": True}, {"role": "user"}, {"role": "user", "disabled": True}):
            r = await admin.patch(f"/api/admin/users/{me['id']}", json=change)
            assert r.status_code == 409 and r.json()["error"] == "self_demotion", r.text
        assert (await admin.get("/api/auth/me")).json()["role"] == "admin"
        assert (await admin.patch(f"/api/admin/users/{me['id']}", json={"disabled": False})).status_code == 200

        other = f"second-{secrets.token_hex(3)}"
        second_token = await hub.new_user(other, admin=True)
        async with hub.client(second_token) as second:
            second_id = (await second.get("/api/auth/me")).json()["id"]
            # with two admins, one may demote the other; then the remaining one is the last
            assert (await second.patch(f"/api/admin/users/{me['id']}", json={"role": "user"})).status_code == 200
            r = await admin.patch(f"/api/admin/users/{second_id}", json={"disabled": True})
            assert r.status_code == 403  # no longer an admin
            r = await second.patch(f"/api/admin/users/{second_id}", json={"role": "user"})
            assert r.status_code == 409 and r.json()["error"] == "self_demotion"
            assert (await second.patch(f"/api/admin/users/{me['id']}", json={"role": "admin"})).status_code == 200
            assert (await admin.patch(f"/api/admin/users/{second_id}", json={"disabled": True})).status_code == 200
