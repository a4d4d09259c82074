"""Single sign-on against a real OpenID provider (node-oidc-provider), the browser played by httpx.

Each test starts its own provider and hub. Bad answers from the provider (a token for another audience, an
expired one, a tampered signature) and from the browser (a replayed or foreign ``state``, a forged login
cookie) each end on a refusal page with a 4xx and a reason, never a session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app import db
from app.models import Group, User, UserGroup, UserIdentity
from app.services.auth.access import SESSION_COOKIE
from tests.support.databases import fresh_database
from tests.support.oidc_provider import SsoHub, provider_round_trip, sso_hub
from tests.support.server import free_port, running_hub
from tests.support.services import need_postgres
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database for the test's hub."""
    with fresh_database("sqlite", tmp_path) as url:
        yield url


async def _me(hub: SsoHub, browser: httpx.AsyncClient) -> httpx.Response:
    return await browser.get("/api/auth/me")


async def _user_rows(hub: SsoHub, username: str) -> tuple[User | None, list[str], list[UserIdentity]]:
    engine = db.create_engine(hub.settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            user = await session.scalar(select(User).where(User.username == username))
            if user is None:
                return None, [], []
            groups = await session.scalars(
                select(Group.name).join(UserGroup, UserGroup.group_id == Group.id).where(UserGroup.user_id == user.id)
            )
            identities = await session.scalars(select(UserIdentity).where(UserIdentity.user_id == user.id))
            return user, sorted(groups), list(identities)
    finally:
        await engine.dispose()


async def test_sign_in_creates_the_user_by_issuer_and_subject_and_returns_to_next(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        methods = (await browser.get("/api/auth/methods")).json()
        assert methods == {"password": True, "oidc": {"name": "Test IdP", "login_url": "/auth/oidc/login"}}
        callback = await provider_round_trip(browser, "bob", next_path="/#workspaces")
        await hub.provider.timings()
        r = await browser.get(callback)
        assert r.status_code == 303, r.text
        assert "/me" in await hub.provider.timings()  # the ID token has no groups here: userinfo is asked
        assert r.headers["location"] == "/#workspaces"
        assert SESSION_COOKIE in r.cookies
        me = await _me(hub, browser)
        assert me.status_code == 200
        assert me.json()["username"] == "bob" and me.json()["role"] == "user"
        user, groups, identities = await _user_rows(hub, "bob")
        assert user is not None and groups == ["designers"]
        assert [(i.issuer, i.subject) for i in identities] == [(hub.provider.issuer, "sub-0002-bob")]
        assert not user.password_hash.startswith("$argon2")  # no password: SSO users cannot sign in locally
        # a second sign-in finds the same user (by issuer and subject), no second account
        browser.cookies.clear()
        r = await browser.get(await provider_round_trip(browser, "bob"))
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert (await _me(hub, browser)).json()["id"] == user.id
        async with httpx.AsyncClient(base_url=hub.url) as anon:
            local = await anon.post("/api/auth/login", json={"username": "bob", "password": "bob-pass"})
            assert local.status_code == 401


async def test_next_never_leaves_the_hub(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            browser.cookies.clear()
            r = await browser.get(await provider_round_trip(browser, "bob", next_path=target))
            assert r.status_code == 303 and r.headers["location"] == "/", target


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each kind (the single-use state is a row both must delete exactly once)."""
    if request.param == "postgres":
        need_postgres()
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _assert_refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "Sign-in refused" in r.text and f'<code id="refusal-code">{code}</code>' in r.text, r.text
    assert SESSION_COOKIE not in r.cookies


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        ("audience", "oidc_audience", "another client"),
        ("expired", "oidc_expired", "expired"),
        ("signature", "oidc_bad_signature", "signature does not verify"),
        ("nonce", "oidc_nonce", "nonce differs"),
        ("unsigned", "oidc_bad_id_token", "algorithm the hub refuses"),
    ],
)
async def test_bad_id_tokens_are_refused_with_a_page(
    tmp_path: Path, db_url: str, fault: str, code: str, words: str
) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        await hub.provider.set_fault(fault)
        r = await browser.get(await provider_round_trip(browser, "alice"))
        _assert_refused(r, 400, code)
        assert words in r.text, r.text
        assert (await _me(hub, browser)).status_code == 401
        assert (await _user_rows(hub, "alice"))[0] is None  # nothing written
        # the same provider, healthy again: the same browser signs in
        await hub.provider.set_fault("none")
        r = await browser.get(await provider_round_trip(browser, "alice"))
        assert r.status_code == 303 and (await _me(hub, browser)).json()["username"] == "alice"


async def test_a_replayed_state_is_refused(tmp_path: Path, any_db_url: str) -> None:
    async with sso_hub(tmp_path, any_db_url) as hub, hub.browser() as browser:
        callback = await provider_round_trip(browser, "bob")
        login_cookie = browser.cookies["codehub_oidc"]
        assert (await browser.get(callback)).status_code == 303
        assert "codehub_oidc" not in browser.cookies  # the sign-in cookie ends with the sign-in
        # the same answer again, with the sign-in cookie put back (an attacker who copied both): used once only
        browser.cookies.set("codehub_oidc", login_cookie, domain="127.0.0.1", path="/auth/oidc")
        browser.cookies.delete(SESSION_COOKIE)
        _assert_refused(await browser.get(callback), 400, "oidc_state_used")
        # and without the cookie: this browser has no sign-in in progress
        browser.cookies.clear()
        _assert_refused(await browser.get(callback), 400, "oidc_no_login")


async def test_an_answer_for_another_browser_or_a_forged_cookie_is_refused(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as victim, hub.browser() as attacker:
        # login CSRF: the attacker's own callback URL, opened in the victim's browser mid sign-in
        assert (await victim.get("/auth/oidc/login")).status_code == 303
        planted = await provider_round_trip(attacker, "bob")
        _assert_refused(await victim.get(planted), 400, "oidc_state")
        assert (await _me(hub, victim)).status_code == 401
        # a login cookie the hub did not sign
        forged = attacker.cookies["codehub_oidc"]
        body, _, _mac = forged.partition(".")
        victim.cookies.set("codehub_oidc", f"{body}.{'A' * 43}", domain="127.0.0.1", path="/auth/oidc")
        _assert_refused(await victim.get(planted), 400, "oidc_bad_login_cookie")
        # the provider's own refusal (the person declined) is a page too
        victim.cookies.clear()
        r = await victim.get("/auth/oidc/login")
        state = httpx.URL(r.headers["location"]).params["state"]
        r = await victim.get("/auth/oidc/callback", params={"state": state, "error": "access_denied"})
        _assert_refused(r, 403, "oidc_provider_refused")
        assert "access_denied" in r.text


async def test_groups_and_admin_role_follow_the_provider_at_every_sign_in(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url, oidc_admin_groups=("hub-admins",)) as hub, hub.browser() as browser:
        r = await browser.get(await provider_round_trip(browser, "alice"))
        assert r.status_code == 303
        assert (await _me(hub, browser)).json()["role"] == "admin"
        assert (await _user_rows(hub, "alice"))[1] == ["devs", "hub-admins"]
        mine = (await browser.get("/api/auth/groups")).json()
        assert [(g["name"], g["source"]) for g in mine] == [("devs", "oidc"), ("hub-admins", "oidc")]
        assert (await browser.get("/api/admin/users")).status_code == 200

        await hub.provider.set_groups("alice", ["devs", "ops"])
        async with hub.browser() as second:
            assert (await second.get(await provider_round_trip(second, "alice"))).status_code == 303
            assert (await _me(hub, second)).json()["role"] == "user"
        user, groups, _ = await _user_rows(hub, "alice")
        assert groups == ["devs", "ops"] and user is not None and user.role == "user"
        # the first browser's session now speaks for a user, not an admin
        assert (await _me(hub, browser)).json()["role"] == "user"
        assert (await browser.get("/api/admin/users")).status_code == 403

        await hub.provider.set_groups("alice", [])
        async with hub.browser() as third:
            assert (await third.get(await provider_round_trip(third, "alice"))).status_code == 303
        assert (await _user_rows(hub, "alice"))[1] == []
        assert (await browser.get("/api/auth/groups")).json() == []


async def test_groups_in_the_id_token_skip_userinfo_and_every_check_still_holds(tmp_path: Path, db_url: str) -> None:
    async with (
        sso_hub(tmp_path, db_url, id_token_claims=True, oidc_admin_groups=("hub-admins",)) as hub,
        hub.browser() as browser,
    ):
        await hub.provider.timings()
        assert (await browser.get(await provider_round_trip(browser, "alice"))).status_code == 303
        assert "/me" not in await hub.provider.timings()  # the verified ID token had the groups: no userinfo
        assert (await _me(hub, browser)).json()["role"] == "admin"
        assert (await _user_rows(hub, "alice"))[1] == ["devs", "hub-admins"]
        await hub.provider.set_groups("alice", ["devs"])
        async with hub.browser() as second:
            assert (await second.get(await provider_round_trip(second, "alice"))).status_code == 303
        assert (await _user_rows(hub, "alice"))[1] == ["devs"]
        assert (await _me(hub, browser)).json()["role"] == "user"
        async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}) as admin:
            audit = (await admin.get("/api/admin/audit", params={"action": "auth.sso_login"})).json()["items"]
            assert [(a["actor_name"], a["outcome"]) for a in audit] == [("alice", "ok"), ("alice", "ok")]
        # a payload changed after signing (groups: hub-admins) is still refused, and so is a replay
        await hub.provider.set_fault("signature")
        browser.cookies.clear()
        callback = await provider_round_trip(browser, "bob")
        _assert_refused(await browser.get(callback), 400, "oidc_bad_signature")
        assert (await _user_rows(hub, "bob"))[0] is None
        await hub.provider.set_fault("none")
        callback = await provider_round_trip(browser, "bob")
        login_cookie = browser.cookies["codehub_oidc"]
        assert (await browser.get(callback)).status_code == 303
        browser.cookies.set("codehub_oidc", login_cookie, domain="127.0.0.1", path="/auth/oidc")
        _assert_refused(await browser.get(callback), 400, "oidc_state_used")


async def test_allowed_groups_gate_the_sign_in(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url, oidc_allowed_groups=("devs", "ops")) as hub, hub.browser() as browser:
        r = await browser.get(await provider_round_trip(browser, "bob"))
        _assert_refused(r, 403, "oidc_group_not_allowed")
        assert "none of the groups allowed" in r.text
        assert (await _user_rows(hub, "bob"))[0] is None
        browser.cookies.clear()
        assert (await browser.get(await provider_round_trip(browser, "alice"))).status_code == 303
        assert (await _me(hub, browser)).json()["username"] == "alice"
        # bob joins an allowed group at the provider: let in at his next sign-in
        await hub.provider.set_groups("bob", ["ops"])
        browser.cookies.clear()
        assert (await browser.get(await provider_round_trip(browser, "bob"))).status_code == 303


async def test_password_login_off_keeps_single_sign_on_and_the_break_glass_admin(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url, password_login=False) as hub, hub.browser() as browser:
        assert (await browser.get("/api/auth/methods")).json()["password"] is False
        r = await browser.post("/api/auth/login", json={"username": "admin", "password": "admin-password-1"})
        assert r.status_code == 403 and r.json()["error"] == "password_login_off"
        # the CLI still makes an admin whose API token works (break glass)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
        env.update(
            CODEHUB_DATA_DIR=str(hub.settings.data_dir),
            CODEHUB_DATABASE_URL=hub.settings.resolved_database_url,
            CODEHUB_PASSWORD_LOGIN="false",
            CODEHUB_LOG_LEVEL="warning",
        )
        done = subprocess.run(
            [sys.executable, "-m", "app", "create-user", "breakglass", "--admin"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}) as cli:
            me = (await cli.get("/api/auth/me")).json()
            assert me["username"] == "breakglass" and me["role"] == "admin"
        # and single sign-on works
        assert (await browser.get(await provider_round_trip(browser, "alice"))).status_code == 303
        assert (await _me(hub, browser)).json()["username"] == "alice"


async def test_logout_ends_the_session_and_signs_out_at_the_provider(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        assert (await browser.get(await provider_round_trip(browser, "bob"))).status_code == 303
        session = browser.cookies[SESSION_COOKIE]
        r = await browser.post("/api/auth/oidc/logout")
        assert r.status_code == 200, r.text
        target = httpx.URL(r.json()["redirect"])
        assert str(target).startswith(f"{hub.provider.issuer}/session/end")
        assert target.params["client_id"] == hub.provider.client_id
        assert target.params["post_logout_redirect_uri"] == f"{hub.url}/"
        async with hub.browser() as replay:  # the old session cookie proves no one any more
            replay.cookies.set(SESSION_COOKIE, session, domain="127.0.0.1")
            assert (await _me(hub, replay)).status_code == 401
        page = await browser.get(target)
        assert page.status_code == 200 and "sign-out" in page.text.lower()
        # a local user's logout stays on the hub
        async with hub.browser() as admin:
            admin.headers["Authorization"] = f"Bearer {hub.admin_token}"
            assert (await admin.post("/api/auth/oidc/logout")).json() == {"redirect": "/"}


async def test_an_unreachable_provider_is_a_clear_page(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(
        tmp_path / "data",
        database_url=db_url,
        oidc_issuer=f"http://127.0.0.1:{free_port()}",
        oidc_client_id="hub",
        oidc_client_secret="secret",
        secret_key="k" * 32,
    )
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as browser:
        _assert_refused(await browser.get("/auth/oidc/login"), 503, "oidc_unavailable")
        r = await browser.get("/auth/oidc/callback", params={"state": "x", "code": "y"})
        _assert_refused(r, 400, "oidc_no_login")


async def test_a_disabled_user_is_refused(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        assert (await browser.get(await provider_round_trip(browser, "bob"))).status_code == 303
        user_id = (await _me(hub, browser)).json()["id"]
        async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}) as admin:
            assert (await admin.patch(f"/api/admin/users/{user_id}", json={"disabled": True})).status_code == 200
        async with hub.browser() as again:
            _assert_refused(await again.get(await provider_round_trip(again, "bob")), 403, "account_disabled")


async def test_without_an_issuer_there_is_no_single_sign_on(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path / "data", database_url=db_url)
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as browser:
        assert (await browser.get("/api/auth/methods")).json() == {"password": True, "oidc": None}
        _assert_refused(await browser.get("/auth/oidc/login"), 404, "oidc_off")
        _assert_refused(await browser.get("/auth/oidc/callback", params={"state": "x", "code": "y"}), 404, "oidc_off")


async def test_sign_in_starts_are_rate_limited_per_client(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url, login_rate_per_minute=1, login_rate_burst=2) as hub, hub.browser() as browser:
        assert [(await browser.get("/auth/oidc/login")).status_code for _ in range(2)] == [303, 303]
        r = await browser.get("/auth/oidc/login")
        _assert_refused(r, 429, "login_rate_limited")
        assert int(r.headers["retry-after"]) >= 1


async def test_a_provider_gone_mid_sign_in_is_a_clear_page(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        callback = await provider_round_trip(browser, "alice")
        await hub.provider.stop()
        _assert_refused(await browser.get(callback), 503, "oidc_unavailable")
        assert (await _me(hub, browser)).status_code == 401


async def test_a_changed_issuer_or_code_in_the_answer_is_refused(tmp_path: Path, db_url: str) -> None:
    async with sso_hub(tmp_path, db_url) as hub, hub.browser() as browser:
        callback = httpx.URL(await provider_round_trip(browser, "alice"))
        assert callback.params["iss"] == hub.provider.issuer  # the provider names itself (RFC 9207)
        mixed_up = callback.copy_set_param("iss", "https://evil.example.test")
        _assert_refused(await browser.get(mixed_up), 400, "oidc_issuer")
        async with hub.browser() as second:
            callback = httpx.URL(await provider_round_trip(second, "alice"))
            forged = callback.copy_set_param("code", callback.params["code"][::-1])
            _assert_refused(await second.get(forged), 400, "oidc_code_refused")
            assert (await _me(hub, second)).status_code == 401
