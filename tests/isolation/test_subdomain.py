"""Attacks on subdomain mode (``CODEHUB_WORKSPACE_DOMAIN=ws.localhost``) against a real uvicorn hub whose
workspaces' IDE is the programmable upstream (it echoes what it receives).

Entry tickets: replayed, expired, shown to another workspace's host, asked for by someone else; workspace
cookies: shown to the API (as Bearer, as the session cookie, as itself), to another workspace's host, after
logout; the API and unknown names on workspace hosts; cross-origin writes between sibling workspace hosts;
ports served owner-only through ``/proxy/<port>/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from sqlalchemy import func, select, update
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app import db
from app.factory import create_app
from app.models import ApiToken, AuditEvent, WorkspaceTicket, utcnow
from app.services.auth.users import hash_token
from tests.support.databases import fresh_database
from tests.support.relay import RelayHub, upstream_command, upstream_process
from tests.support.server import admin_token, free_port, serve_asgi
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio

DOMAIN = "ws.localhost"
PASSWORD = "password-123"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The programmable upstream as every workspace's IDE (``host:port``)."""
    with upstream_process() as (_, address):
        yield address


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sub_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database (tickets are consumed with DELETE … RETURNING on both)."""
    with fresh_database(request.param, tmp_path_factory.mktemp("subdb")) as url:
        yield url


@dataclass
class Setup:
    """The hub, its port, and alice's and bob's workspaces."""

    hub: RelayHub
    port: int
    alice_ws: str
    alice_ws2: str
    bob_ws: str

    def host(self, label: str) -> str:
        """The Host header of a workspace label."""
        return f"{label}.{DOMAIN}:{self.port}"


@pytest.fixture(scope="module")
async def setup(sub_db: str, upstream: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    """A subdomain-mode hub on a known port with users alice and bob and three running workspaces."""
    port = free_port()
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=sub_db,
        runtime="local",
        local_ide_command=upstream_command(),
        idle_timeout=0,
        public_url=f"http://127.0.0.1:{port}",
        workspace_domain=DOMAIN,
    )
    token = await admin_token(settings)
    app = create_app(settings)
    async with serve_asgi(app, port=port) as url:
        hub = RelayHub(url, settings, token, app=app, ws_url=url.replace("http://", "ws://"))
        hub.alice = await hub.new_user("alice")
        hub.bob = await hub.new_user("bob")
        yield Setup(
            hub,
            port,
            await hub.workspace(hub.alice, "one", upstream),
            await hub.workspace(hub.alice, "two", upstream),
            await hub.workspace(hub.bob, "three", upstream),
        )


async def login(setup: Setup, username: str, password: str = PASSWORD) -> str:
    """A fresh session cookie value for ``username``."""
    async with httpx.AsyncClient(base_url=setup.hub.url) as client:
        r = await client.post("/api/auth/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        assert "domain=" not in r.headers["set-cookie"].lower()  # host-only: workspace hosts never get it
        return r.cookies["codehub_session"]


@dataclass
class Ticket:
    """A ticket the hub issued, and the state cookie of the browser it was issued for."""

    enter: str  # path and query of the workspace host's entry URL
    state: str
    next: str

    @property
    def raw(self) -> str:
        """The ticket itself."""
        return parse_qs(urlsplit(self.enter).query)["ticket"][0]


async def on_host(
    setup: Setup,
    label: str,
    method: str,
    target: str,
    *,
    cookie: str | None = None,
    state: str | None = None,
    **kwargs: object,
) -> httpx.Response:
    """One request to a workspace host (sent to the hub's address with that Host)."""
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
    headers["Host"] = setup.host(label)
    jar = [f"codehub_ws={cookie}"] if cookie is not None else []
    jar += [f"codehub_ws_state={state}"] if state is not None else []
    if jar:
        headers["Cookie"] = "; ".join(jar)
    async with httpx.AsyncClient(base_url=setup.hub.url) as client:
        return await client.request(method, target, headers=headers, **kwargs)  # type: ignore[arg-type]


async def ticket_for(setup: Setup, session: str, label: str, path: str = "/") -> Ticket:
    """Follow the entry up to the ticket: hub ``/w/<label><path>`` → workspace host ``/_codehub/start`` (a state
    cookie) → hub ``/_codehub/ticket`` → the workspace host's ``/_codehub/enter`` URL."""
    async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": session}) as hub:
        r = await hub.get(f"/w/{label}{path}", headers={"Accept": "text/html"})
        assert r.status_code == 302 and "set-cookie" not in r.headers, r.text
        start = urlsplit(r.headers["location"])
        assert start.netloc == setup.host(label) and start.path == "/_codehub/start"
        r = await on_host(setup, label, "GET", f"{start.path}?{start.query}")
        assert r.status_code == 302, r.text
        state_cookie = r.headers["set-cookie"]
        assert "HttpOnly" in state_cookie and "Domain" not in state_cookie
        state = state_cookie.split(";")[0].split("=", 1)[1]
        ticket_url = urlsplit(r.headers["location"])
        assert f"{ticket_url.scheme}://{ticket_url.netloc}" == setup.hub.url and ticket_url.path == "/_codehub/ticket"
        r = await hub.get(f"{ticket_url.path}?{ticket_url.query}")
        assert r.status_code == 302 and "set-cookie" not in r.headers, r.text
        assert r.headers["referrer-policy"] == "no-referrer"
        enter_url = urlsplit(r.headers["location"])
    assert enter_url.netloc == setup.host(label) and enter_url.path == "/_codehub/enter"
    return Ticket(f"{enter_url.path}?{enter_url.query}", state, parse_qs(enter_url.query)["next"][0])


async def enter(setup: Setup, session: str, label: str) -> str:
    """Follow the entry flow; the workspace cookie's value."""
    ticket = await ticket_for(setup, session, label)
    r = await on_host(setup, label, "GET", ticket.enter, state=ticket.state)
    assert r.status_code == 302 and r.headers["location"] == "/", r.text
    cookie = r.headers.get_list("set-cookie")[0]
    assert "HttpOnly" in cookie and "Domain" not in cookie and "SameSite=Lax" in cookie
    return cookie.split(";")[0].split("=", 1)[1]


async def count(setup: Setup, model: type, *where: object) -> int:
    """Rows of ``model`` matching ``where``."""
    engine = db.create_engine(setup.hub.settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def test_the_owner_enters_and_the_ide_sees_no_hub_credential(setup: Setup) -> None:
    session = await login(setup, "alice")
    ticket = await ticket_for(setup, session, setup.alice_ws, "/sub/page?x=1")
    assert ticket.next == "/sub/page?x=1"
    assert await count(setup, WorkspaceTicket, WorkspaceTicket.ticket_hash == hash_token(ticket.raw)) == 1
    assert await count(setup, WorkspaceTicket, WorkspaceTicket.state_hash == hash_token(ticket.state)) == 1
    r = await on_host(setup, setup.alice_ws, "GET", ticket.enter, state=ticket.state)
    assert r.status_code == 302 and r.headers["location"] == "/sub/page?x=1"
    assert "codehub_ws_state=;" in r.headers.get_list("set-cookie")[1]  # the state is spent
    set_cookie = r.headers.get_list("set-cookie")[0]
    cookie = set_cookie.split(";")[0].split("=", 1)[1]
    max_age = int(set_cookie.split("Max-Age=")[1].split(";")[0])
    assert 0 < max_age <= setup.hub.settings.workspace_cookie_ttl
    assert await count(setup, ApiToken, ApiToken.token_hash == hash_token(cookie), ApiToken.kind == "workspace") == 1
    r = await on_host(setup, setup.alice_ws, "GET", "/echo?q=1", cookie=cookie, state=ticket.state)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/echo"
    assert "codehub_" not in str(seen["headers"]) and cookie not in str(seen)
    assert "x-forwarded-prefix" not in {pair[0].lower() for pair in seen["headers"]}


async def test_entry_returns_only_to_paths_on_the_workspace_host(setup: Setup) -> None:
    session = await login(setup, "alice")
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/%2F%2Fevil.example"):
        r = await on_host(setup, setup.alice_ws, "GET", "/_codehub/start", params={"next": evil})
        state = r.cookies["codehub_ws_state"]
        assert parse_qs(urlsplit(r.headers["location"]).query)["next"] == ["/"], evil
        async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": session}) as hub:
            r = await hub.get("/_codehub/ticket", params={"label": setup.alice_ws, "state": state, "next": evil})
        enter = urlsplit(r.headers["location"])
        assert parse_qs(enter.query)["next"] == ["/"], evil
        tampered = f"{enter.path}?ticket={parse_qs(enter.query)['ticket'][0]}&next={evil}"
        r = await on_host(setup, setup.alice_ws, "GET", tampered, state=state)
        assert r.status_code == 302 and r.headers["location"] == "/", evil


async def test_ready_has_no_path_mode_warning(setup: Setup) -> None:
    async with setup.hub.client() as client:
        assert (await client.get("/ready")).json()["warnings"] == []


async def test_a_ticket_works_once(setup: Setup) -> None:
    session = await login(setup, "alice")
    ticket = await ticket_for(setup, session, setup.alice_ws)
    first = await on_host(setup, setup.alice_ws, "GET", ticket.enter, state=ticket.state)
    assert first.status_code == 302 and "codehub_ws=" in first.headers["set-cookie"]
    again = await on_host(setup, setup.alice_ws, "GET", ticket.enter, state=ticket.state)
    assert again.status_code == 403 and "set-cookie" not in again.headers
    assert "already used" in again.text and again.headers["content-type"].startswith("text/html")


async def test_concurrent_uses_of_a_ticket_open_one_cookie(setup: Setup) -> None:
    session = await login(setup, "alice")
    ticket = await ticket_for(setup, session, setup.alice_ws)
    statuses: list[int] = []

    async def use() -> None:
        r = await on_host(setup, setup.alice_ws, "GET", ticket.enter, state=ticket.state)
        statuses.append(r.status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(use)
    assert sorted(statuses) == [302] + [403] * 7


async def test_an_expired_ticket_is_refused(setup: Setup) -> None:
    session = await login(setup, "alice")
    ticket = await ticket_for(setup, session, setup.alice_ws)
    engine = db.create_engine(setup.hub.settings)
    try:
        async with db.create_sessionmaker(engine)() as s:
            await s.execute(
                update(WorkspaceTicket)
                .where(WorkspaceTicket.ticket_hash == hash_token(ticket.raw))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            await s.commit()
    finally:
        await engine.dispose()
    r = await on_host(setup, setup.alice_ws, "GET", ticket.enter, state=ticket.state)
    assert r.status_code == 403 and "expired" in r.text and "set-cookie" not in r.headers


async def test_someone_elses_ticket_enters_no_one(setup: Setup) -> None:
    """A forced entry: bob sends alice a link with his own ticket into his workspace (he would then see what she
    types there, as him). Her browser does not hold the state his ticket was made for."""
    bob = await login(setup, "bob")
    r = await on_host(setup, setup.bob_ws, "GET", "/_codehub/start", params={"next": "/"})
    her_state = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]  # her browser has started an entry too
    for state in (None, her_state, "chst_guess", "x" * 300):
        ticket = await ticket_for(setup, bob, setup.bob_ws)
        r = await on_host(setup, setup.bob_ws, "GET", ticket.enter, state=state)
        assert r.status_code == 403 and "set-cookie" not in r.headers, state
        assert "another browser" in r.text
        # spent by that try: not even bob's own browser gets in with it now
        r = await on_host(setup, setup.bob_ws, "GET", ticket.enter, state=ticket.state)
        assert r.status_code == 403 and "already used" in r.text


async def test_the_hub_issues_tickets_only_for_a_state_and_an_allowed_workspace(setup: Setup) -> None:
    bob = await login(setup, "bob")
    async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": bob}) as hub:
        for state in ("", "nope", "chst_" + "x" * 200):
            r = await hub.get("/_codehub/ticket", params={"label": setup.bob_ws, "state": state})
            assert r.status_code == 403 and "location" not in r.headers, state
        r = await hub.get("/_codehub/ticket", params={"label": setup.alice_ws, "state": "chst_abc"})
        assert r.status_code == 404 and "location" not in r.headers
        r = await hub.get(f"/w/{setup.alice_ws}/", headers={"Accept": "text/html"})
        assert r.status_code == 404 and "location" not in r.headers
        r = await hub.post("/_codehub/ticket", params={"label": setup.bob_ws, "state": "chst_abc"})
        assert r.status_code == 405
    async with httpx.AsyncClient(base_url=setup.hub.url) as anon:
        r = await anon.get("/_codehub/ticket", params={"label": setup.bob_ws, "state": "chst_abc"})
        assert r.status_code == 401 and "location" not in r.headers


async def test_a_ticket_opens_only_its_own_workspace(setup: Setup) -> None:
    bob = await login(setup, "bob")
    ticket = await ticket_for(setup, bob, setup.bob_ws)
    for label in (setup.alice_ws, f"8000--{setup.alice_ws}", f"8000--{setup.bob_ws}"):
        r = await on_host(setup, label, "GET", ticket.enter, state=ticket.state)
        assert r.status_code == 403 and "set-cookie" not in r.headers, label
    # shown to the wrong host, the ticket is spent
    r = await on_host(setup, setup.bob_ws, "GET", ticket.enter, state=ticket.state)
    assert r.status_code == 403
    for junk in ("", "chtk_nope", "x" * 300):
        r = await on_host(setup, setup.alice_ws, "GET", "/_codehub/enter", params={"ticket": junk}, state="chst_x")
        assert r.status_code == 403 and "set-cookie" not in r.headers


async def test_a_workspace_cookie_is_no_hub_credential(setup: Setup) -> None:
    session = await login(setup, "alice")
    cookie = await enter(setup, session, setup.alice_ws)
    attempts = [
        {"Authorization": f"Bearer {cookie}"},
        {"Cookie": f"codehub_session={cookie}"},
        {"Cookie": f"codehub_ws={cookie}"},
    ]
    async with httpx.AsyncClient(base_url=setup.hub.url) as client:
        for headers in attempts:
            for method, path in (("GET", "/api/auth/me"), ("POST", "/api/auth/tokens")):
                r = await client.request(method, path, headers=headers, json={"name": "stolen"})
                assert r.status_code == 401, (headers, path, r.text)
            r = await client.get(f"/w/{setup.alice_ws}/", headers={**headers, "Accept": "text/html"})
            assert r.status_code == 401 and "location" not in r.headers
        ws_url = f"{setup.hub.ws_url}/ws/workspaces/{setup.alice_ws}"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, additional_headers={"Cookie": f"codehub_session={cookie}"}):
                pass
        assert refused.value.response.status_code == 401


async def test_a_workspace_cookie_opens_no_other_workspace(setup: Setup) -> None:
    session = await login(setup, "alice")
    cookie = await enter(setup, session, setup.alice_ws)
    for label in (setup.alice_ws2, setup.bob_ws):
        r = await on_host(setup, label, "GET", "/", cookie=cookie)
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", label
        r = await on_host(setup, label, "GET", "/", cookie=cookie, headers={"Accept": "text/html"})
        assert r.status_code == 302 and "codehub_ws_state=" in r.headers["set-cookie"]
        assert r.headers["location"].startswith(f"{setup.hub.url}/_codehub/ticket?label={label}&")
    # a sibling host tossing its own cookie beside the right one changes nothing for the owner
    r = await on_host(
        setup, setup.alice_ws, "GET", "/x", headers={"Cookie": f"codehub_ws=chws_bogus; codehub_ws={cookie}"}
    )
    assert r.status_code == 200


async def test_logout_ends_the_workspace_cookies_it_opened(setup: Setup) -> None:
    session = await login(setup, "alice")
    cookie = await enter(setup, session, setup.alice_ws)
    assert (await on_host(setup, setup.alice_ws, "GET", "/", cookie=cookie)).status_code == 200
    async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": session}) as client:
        r = await client.post("/api/auth/logout", headers={"Origin": setup.hub.url})
        assert r.status_code == 204, r.text
    assert (await on_host(setup, setup.alice_ws, "GET", "/", cookie=cookie)).status_code == 401


async def test_a_ticket_made_before_logout_opens_nothing_after(setup: Setup) -> None:
    session = await login(setup, "alice")
    ticket = await ticket_for(setup, session, setup.alice_ws)
    async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": session}) as client:
        assert (await client.post("/api/auth/logout", headers={"Origin": setup.hub.url})).status_code == 204
    r = await on_host(setup, setup.alice_ws, "GET", ticket.enter, state=ticket.state)
    assert r.status_code == 403 and "has ended" in r.text and "set-cookie" not in r.headers


async def test_disabling_a_user_ends_their_workspace_cookies(setup: Setup, upstream: str) -> None:
    carol = await setup.hub.new_user("carol")
    ws = await setup.hub.workspace(carol, "carols", upstream)
    cookie = await enter(setup, await login(setup, "carol"), ws)
    assert (await on_host(setup, ws, "GET", "/", cookie=cookie)).status_code == 200
    async with setup.hub.client() as admin:
        me = (await admin.get("/api/auth/me", headers={"Authorization": f"Bearer {carol}"})).json()
        r = await admin.patch(f"/api/admin/users/{me['id']}", json={"disabled": True})
        assert r.status_code == 200, r.text
    assert (await on_host(setup, ws, "GET", "/", cookie=cookie)).status_code == 401


async def test_the_api_and_unknown_names_are_not_served_on_workspace_hosts(setup: Setup) -> None:
    session = await login(setup, "alice")
    cookie = await enter(setup, session, setup.alice_ws)
    for path in ("/api/auth/me", "/api/auth/tokens", "/api/admin/users"):
        for method in ("GET", "POST"):
            r = await on_host(setup, setup.alice_ws, method, path, cookie=cookie, json={"name": "x"})
            assert r.status_code == 421 and r.json()["error"] == "misdirected", (method, path)
    for host in (DOMAIN, f"a.b.{DOMAIN}", f"Not_A_Label.{DOMAIN}", f"99999--{setup.alice_ws}.{DOMAIN}"):
        async with httpx.AsyncClient(base_url=setup.hub.url) as client:
            r = await client.get("/api/auth/me", headers={"Host": f"{host}:{setup.port}"})
        assert r.status_code == 404 and r.json()["error"] == "no_such_host", host
    r = await on_host(setup, "zzzzzzzzzzzz", "GET", "/", cookie=cookie)
    assert r.status_code == 401


async def test_sibling_workspace_origins_cannot_write(setup: Setup) -> None:
    session = await login(setup, "alice")
    cookie = await enter(setup, session, setup.alice_ws)
    sibling = f"http://{setup.host(setup.alice_ws2)}"
    r = await on_host(setup, setup.alice_ws, "POST", "/save", cookie=cookie, headers={"Origin": sibling}, content=b"x")
    assert r.status_code == 403 and r.json()["error"] == "cross_origin"
    r = await on_host(setup, setup.alice_ws, "POST", "/save", cookie=cookie, headers={"Sec-Fetch-Site": "same-site"})
    assert r.status_code == 403
    own = f"http://{setup.host(setup.alice_ws)}"
    r = await on_host(setup, setup.alice_ws, "POST", "/save", cookie=cookie, headers={"Origin": own}, content=b"x")
    assert r.status_code == 200 and r.json()["method"] == "POST"
    ws_url = f"ws://{setup.host(setup.alice_ws)}/socket"
    headers = {"Cookie": f"codehub_ws={cookie}"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url, host="127.0.0.1", additional_headers={**headers, "Origin": sibling}):
            pass
    assert refused.value.response.status_code == 403
    async with connect(ws_url, host="127.0.0.1", additional_headers={**headers, "Origin": own}) as sock:
        await sock.send("ping")
        assert await sock.recv() == "ping"


async def test_websockets_to_the_hubs_path_are_refused(setup: Setup) -> None:
    session = await login(setup, "alice")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"{setup.hub.ws_url}/w/{setup.alice_ws}/socket",
            additional_headers={"Cookie": f"codehub_session={session}", "Origin": setup.hub.url},
        ):
            pass
    assert refused.value.response.status_code == 404


async def test_ports_are_for_the_owner_only(setup: Setup) -> None:
    label = f"9000--{setup.alice_ws}"
    alice = await login(setup, "alice")
    cookie = await enter(setup, alice, label)
    r = await on_host(setup, label, "GET", "/api/items?a=1", cookie=cookie)
    assert r.status_code == 200 and r.json()["path"] == "/proxy/9000/api/items"
    ide_cookie = await enter(setup, alice, setup.alice_ws)
    r = await on_host(setup, f"9001--{setup.bob_ws}", "GET", "/", cookie=ide_cookie)
    assert r.status_code == 401
    r = await on_host(setup, f"9001--{setup.alice_ws2}", "GET", "/", cookie=cookie)
    assert r.status_code == 401
    async with httpx.AsyncClient(base_url=setup.hub.url) as client:
        admin_session = await client.post("/api/auth/login", json={"username": "admin", "password": "admin-password-1"})
    admin = admin_session.cookies["codehub_session"]
    async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": admin}) as client:
        r = await client.get(f"/w/{label}/", headers={"Accept": "text/html"})
        assert r.status_code == 404
        r = await client.get(f"/w/{setup.alice_ws}/", headers={"Accept": "text/html"})
        assert r.status_code == 302  # the IDE, on its own origin: admins may, audited
    before = await count(setup, AuditEvent, AuditEvent.action == "workspace.impersonate")
    assert before >= 1
