"""The access module on its own: credentials, the session cookie, owner-or-admin, audit entries, the token
cache under revocation, and single flight."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from app.services.auth.access import (
    Credentials,
    Principal,
    Revocation,
    TokenCache,
    audit_entry,
    identify,
    may_access,
    session_cookie_attributes,
    session_set_cookie,
)
from app.services.singleflight import SingleFlight
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio

ALICE = Principal(1, "alice", "user", "t-alice", "api")
ADMIN = Principal(2, "root", "admin", "t-root", "session")


def test_credentials_from_a_scope() -> None:
    scope = {
        "headers": [(b"authorization", b"bearer chub_h"), (b"cookie", b'x=1; codehub_session="chub_c"')],
        "query_string": b"access_token=chub_q",
    }
    creds = Credentials.of(scope)
    assert (creds.token, creds.source, creds.query, creds.cookie) == ("chub_h", "bearer", "chub_q", "chub_c")
    assert creds.candidates == ("chub_h", "chub_c")
    foreign = Credentials([(b"authorization", b"Bearer someone-elses-jwt")], b"")  # an app's own, not the hub's
    assert foreign.token is None and foreign.candidates == ()
    same = Credentials([(b"cookie", b"codehub_session=chub_c")], b"access_token=")
    assert (same.token, same.source, same.query) == ("chub_c", "cookie", "")
    assert same.candidates == ("chub_c",)
    assert Credentials.of({"type": "http"}).token is None


async def test_identify_falls_back_to_the_cookie() -> None:
    known = {"chub_c": ALICE}

    async def principal_of(token: str) -> Principal | None:
        return known.get(token)

    stale_query = Credentials([(b"cookie", b"codehub_session=chub_c")], b"access_token=chub_old")
    assert await identify(stale_query, principal_of) == ALICE
    assert await identify(Credentials([], b"access_token=chub_old"), principal_of) is None


def test_the_session_cookie(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, session_ttl=3600, cookie_secure=True)
    value = session_set_cookie(settings, "chub_x").decode()
    assert value == "codehub_session=chub_x; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
    ending = session_cookie_attributes(settings, ending=True)
    assert ending.max_age == 0 and ending.name == "codehub_session" and ending.secure


def test_owner_or_admin() -> None:
    assert may_access(ALICE, 1) and not may_access(ALICE, 2) and not may_access(ALICE, None)
    assert may_access(ADMIN, 1) and may_access(ADMIN, None)


def test_audit_entry_from_a_scope() -> None:
    scope = {"client": ("10.1.2.3", 5555), "state": {"request_id": "rid-1"}, "headers": []}
    entry = audit_entry(scope, "terminal.open", ALICE, workspace_id="w1", target="main")
    assert (entry.action, entry.actor_id, entry.actor_name) == ("terminal.open", 1, "alice")
    assert (entry.request_id, entry.client_addr, entry.workspace_id, entry.target) == (
        "rid-1",
        "10.1.2.3",
        "w1",
        "main",
    )
    anonymous = audit_entry({}, "auth.login", outcome="denied")
    assert anonymous.actor_id is None and anonymous.request_id is None and anonymous.client_addr is None


async def test_a_revocation_during_a_lookup_neither_fills_the_cache_nor_answers_later_callers() -> None:
    cache = TokenCache(ttl=600)
    lookups = 0
    release = anyio.Event()
    revoked = False

    async def lookup(_digest: str) -> Principal | None:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            await release.wait()  # the database read happened before the revocation committed
            return ALICE
        return None if revoked else ALICE

    results: dict[str, Principal | None] = {}

    async def ask(name: str) -> None:
        results[name] = await cache.get("d", lookup)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask, "before")
        await anyio.sleep(0.01)
        revoked = True
        cache.apply(Revocation(token_id=ALICE.token_id))
        tasks.start_soon(ask, "after")  # arrives after the revocation: must not share the stale lookup
        await anyio.sleep(0.01)
        release.set()
    assert results == {"before": ALICE, "after": None}
    assert await cache.get("d", lookup) is None  # the stale answer was not cached
    assert lookups == 3


async def test_revocations_drop_entries_by_token_and_by_user() -> None:
    cache = TokenCache(ttl=600)
    calls: list[str] = []
    principals = {"a": ALICE, "b": Principal(1, "alice", "user", "t-other", "session"), "c": ADMIN}

    async def lookup(digest: str) -> Principal | None:
        calls.append(digest)
        return principals[digest]

    for digest in "abc":
        await cache.get(digest, lookup)
    cache.apply(Revocation(token_id="t-alice"))
    for digest in "abc":
        await cache.get(digest, lookup)
    assert calls == ["a", "b", "c", "a"]
    cache.apply(Revocation(user_id=1))
    for digest in "abc":
        await cache.get(digest, lookup)
    assert calls == ["a", "b", "c", "a", "a", "b"]


async def test_single_flight_shares_one_run_and_reruns_after_a_failure_or_a_refusal() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate = anyio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return runs

    seen: list[int] = []

    async def call(accept: bool = True) -> None:
        seen.append(await flight.run("k", work, None if accept else (lambda value: value > 1)))

    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(call)
        tasks.start_soon(call, False)  # refuses the shared result: runs again
        await anyio.sleep(0.01)
        assert flight.running("k")
        gate.set()
    assert sorted(seen) == [1, 1, 1, 1, 1, 2] and runs == 2 and not flight.running("k")

    async def failing() -> int:
        await anyio.sleep(0.01)
        raise RuntimeError("database down")

    async def leader() -> None:
        with pytest.raises(RuntimeError):
            await flight.run("k", failing)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(leader)
        await anyio.sleep(0)
        tasks.start_soon(call)  # its leader failed: it runs the work itself
    assert seen[-1] == 3
