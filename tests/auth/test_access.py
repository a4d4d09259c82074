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
    cross_origin_refusal,
    from_own_origin,
    identify,
    may_access,
    origin_allowed,
    safe_next,
    session_cookie_attributes,
    session_set_cookie,
)
from app.services.singleflight import SingleFlight
from app.settings import load_settings
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
    assert (creds.token, creds.source, creds.cookie) == ("chub_h", "bearer", "chub_c")
    assert creds.candidates == ("chub_h", "chub_c")
    foreign = Credentials([(b"authorization", b"Bearer someone-elses-jwt")])  # an app's own, not the hub's
    assert foreign.token is None and foreign.candidates == ()
    same = Credentials.of({"headers": [(b"cookie", b"codehub_session=chub_c")], "query_string": b"access_token=chub_q"})
    assert (same.token, same.source) == ("chub_c", "cookie")  # a token in the URL is no credential
    assert same.candidates == ("chub_c",)
    assert Credentials.of({"query_string": b"access_token=chub_q"}).token is None
    assert Credentials.of({"type": "http"}).token is None


class Verifier:
    """Tokens known up front; ``cached`` knows the cached half, ``principal_of`` all of them."""

    def __init__(self, known: dict[str, Principal], cached: frozenset[str] = frozenset()) -> None:
        self.known, self.warm = known, cached

    def cached(self, raw: str) -> Principal | None:
        return self.known.get(raw) if raw in self.warm else None

    async def principal_of(self, raw: str) -> Principal | None:
        return self.known.get(raw)


async def test_identify_falls_back_to_the_cookie() -> None:
    verifier = Verifier({"chub_c": ALICE})
    stale_bearer = Credentials([(b"cookie", b"codehub_session=chub_c"), (b"authorization", b"Bearer chub_old")])
    assert await identify(stale_bearer, verifier) == ALICE
    assert stale_bearer.proven_by == "cookie"  # the cookie proved it: the origin rule applies
    assert await identify(Credentials([(b"authorization", b"Bearer chub_old")]), verifier) is None
    bearer = Credentials([(b"cookie", b"codehub_session=chub_x"), (b"authorization", b"Bearer chub_c")])
    assert await identify(bearer, verifier) == ALICE and bearer.proven_by == "bearer"
    warm = Credentials([(b"cookie", b"codehub_session=chub_c"), (b"authorization", b"Bearer chub_old")])
    assert await identify(warm, Verifier({"chub_c": ALICE}, cached=frozenset({"chub_c"}))) == ALICE
    assert warm.proven_by == "cookie"


def test_origin_rules() -> None:
    plain = load_settings(environ={})
    assert origin_allowed(b"http://hub:8000", b"hub:8000", plain)
    assert origin_allowed(b"https://hub", b"hub:443", plain)
    assert not origin_allowed(b"http://evil:8000", b"hub:8000", plain)
    assert not origin_allowed(b"null", b"hub:8000", plain)
    assert not origin_allowed(b"http://[::1", b"hub:8000", plain)
    assert not origin_allowed(b"http://hub:8001", b"hub:8000", plain)
    public = load_settings(environ={}, public_url="https://code.example.com", allowed_origins=("https://ide.example",))
    assert origin_allowed(b"https://code.example.com", b"internal:8000", public)
    assert origin_allowed(b"https://ide.example", b"internal:8000", public)
    assert not origin_allowed(b"http://internal:8000", b"internal:8000", public)
    assert not origin_allowed(b"http://code.example.com", b"code.example.com", public)
    host = (b"host", b"hub:8000")
    assert from_own_origin([host], plain)  # no browser sent it
    assert from_own_origin([host, (b"sec-fetch-site", b"same-origin")], plain)
    assert from_own_origin([host, (b"sec-fetch-site", b"none")], plain)
    assert not from_own_origin([host, (b"sec-fetch-site", b"cross-site")], plain)
    assert not from_own_origin([host, (b"sec-fetch-site", b"same-site")], plain)
    assert not from_own_origin([host, (b"origin", b"http://evil"), (b"sec-fetch-site", b"same-origin")], plain)


async def test_the_origin_rule_binds_cookie_authenticated_unsafe_requests_only() -> None:
    settings = load_settings(environ={})

    verifier = Verifier({"chub_c": ALICE})

    async def refused(method: str, *headers: tuple[bytes, bytes], kind: str = "http") -> bool:
        scope = {"type": kind, "method": method, "headers": [(b"host", b"hub"), (b"origin", b"http://evil"), *headers]}
        credentials = Credentials.of(scope)
        assert await identify(credentials, verifier) == ALICE
        refusal = cross_origin_refusal(scope, credentials, settings)
        assert refusal is None or (refusal.status, refusal.code) == (403, "cross_origin")
        return refusal is not None

    cookie = (b"cookie", b"codehub_session=chub_c")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert await refused(method, cookie)
    assert await refused("GET", cookie, kind="websocket")
    assert not await refused("GET", cookie) and not await refused("HEAD", cookie)
    assert not await refused("POST", (b"authorization", b"Bearer chub_c"))
    assert await refused("POST", cookie, (b"authorization", b"Bearer chub_stale"))  # the cookie proved it


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "/x\r\nSet-Cookie: a=b",
        "/%0d%0aLocation:%20//evil",
        "\t//evil.example",
        " /x",
        "",
        None,
        "/" + "a" * 5000,
    ],
)
def test_hostile_next_targets_go_home(target: str | None) -> None:
    assert safe_next(target) == "/"


def test_own_next_targets_are_kept() -> None:
    for target in ("/", "/w/abc/", "/w/abc/?folder=%2Fhome%2Fcoder&x=1", "/#audit"):
        assert safe_next(target) == target


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


async def test_an_entry_near_its_end_is_refreshed_by_one_caller_while_the_others_use_it() -> None:
    cache = TokenCache(ttl=0.5)
    lookups = 0
    release = anyio.Event()

    async def lookup(_digest: str) -> Principal | None:
        nonlocal lookups
        lookups += 1
        if lookups == 2:
            await release.wait()  # the refresh is slow
        return ALICE

    assert await cache.get("d", lookup) == ALICE and cache.peek("d") == ALICE
    await anyio.sleep(0.45)  # in the last fifth of its time
    assert cache.peek("d") is None  # the relay's fast path leaves the refresh to get()
    answered: list[Principal | None] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cache.get, "d", lookup)  # refreshes, and waits for it
        await anyio.sleep(0.01)
        for _ in range(5):  # the others do not wait for the refresh
            answered.append(await cache.get("d", lookup))
        assert answered == [ALICE] * 5 and lookups == 2
        release.set()
    assert cache.peek("d") == ALICE  # refreshed for a whole new period


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
