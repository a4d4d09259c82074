"""Attacks on sharing against a real uvicorn hub in subdomain mode (local runtime, the programmable upstream as
the IDE): a ``view`` grantee cannot write, exec, open the terminal or the IDE; a stranger gets nothing; no
grantee re-shares, stops or deletes; a ``use`` grantee (directly or through a group) enters the IDE on its
own origin through the ticket flow and opens the terminal, and revoking the grant closes that terminal and
the IDE WebSocket within seconds. SSE topics follow the grant (a viewer reads lifecycle and logs, not exec
output). Path mode refuses sharing with the reason. On SQLite and on Postgres."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app import db
from app.factory import create_app
from app.models import AuditEvent
from app.streams.relay.splice import SpliceProtocol
from tests.support.databases import fresh_database
from tests.support.lifecycle import wait_state
from tests.support.relay import RelayHub, upstream_command
from tests.support.server import admin_token, free_port, running_hub, serve_asgi
from tests.support.settings import make_settings
from tests.support.terminal import open_terminal, read_until

pytestmark = pytest.mark.anyio

DOMAIN = "ws.localhost"
PASSWORD = "password-123"


@dataclass
class Setup:
    """The hub and its users' tokens and ids; alice owns ``ws`` (running, with a real local IDE process)."""

    hub: RelayHub
    port: int
    ws: str
    tokens: dict[str, str]
    ids: dict[str, int]

    def host(self) -> str:
        """The Host header of alice's workspace."""
        return f"{self.ws}.{DOMAIN}:{self.port}"

    def client(self, user: str) -> httpx.AsyncClient:
        """An API client as ``user``."""
        return self.hub.client(self.tokens[user])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def share_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the module, on each database the hub supports."""
    with fresh_database(request.param, tmp_path_factory.mktemp("sharedb")) as url:
        yield url


@pytest.fixture(scope="module")
async def setup(share_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    """A subdomain-mode hub with alice (owner), viewer, user, member (in a group) and stranger."""
    port = free_port()
    settings = make_settings(
        tmp_path_factory.mktemp("data"),
        database_url=share_db,
        runtime="local",
        local_ide_command=upstream_command(),
        start_timeout=20,
        idle_timeout=0,
        public_url=f"http://127.0.0.1:{port}",
        workspace_domain=DOMAIN,
    )
    token = await admin_token(settings)
    app = create_app(settings)
    async with serve_asgi(app, port=port, ws=SpliceProtocol) as base:  # as `codehub serve` does
        hub = RelayHub(base, settings, token, app=app, ws_url=base.replace("http://", "ws://"))
        tokens = {name: await hub.new_user(name) for name in ("alice", "viewer", "user", "member", "stranger")}
        ids = {}
        for name, raw in tokens.items():
            async with hub.client(raw) as client:
                ids[name] = (await client.get("/api/auth/me")).json()["id"]
        async with hub.client(tokens["alice"]) as client:
            ws = (await client.post("/api/workspaces", json={"name": "shared"})).json()["id"]
            await client.post(f"/api/workspaces/{ws}/start")
            assert (await wait_state(client, ws, {"running", "failed"}))["state"] == "running"
            r = await client.put(f"/api/workspaces/{ws}/files/content", params={"path": "a.txt"}, content=b"one")
            assert r.status_code == 201, r.text
        yield Setup(hub, port, ws, tokens, ids)
        async with hub.client(tokens["alice"]) as client:
            await client.post(f"/api/workspaces/{ws}/stop")


async def grant(setup: Setup, kind: str, subject_id: int, level: str, as_user: str = "alice") -> httpx.Response:
    """POST a grant on alice's workspace."""
    async with setup.client(as_user) as client:
        body = {"subject_kind": kind, "subject_id": subject_id, "level": level}
        return await client.post(f"/api/workspaces/{setup.ws}/grants", json=body)


async def terminal_status(setup: Setup, user: str) -> int:
    """101 when ``user`` may open the terminal, else the refusal's status."""
    try:
        async with open_terminal(setup.hub.url, setup.ws, setup.tokens[user]):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def login(setup: Setup, user: str) -> str:
    """A session cookie for ``user``."""
    async with httpx.AsyncClient(base_url=setup.hub.url) as client:
        r = await client.post("/api/auth/login", json={"username": user, "password": PASSWORD})
        return r.cookies["codehub_session"]


async def on_host(setup: Setup, target: str, **headers: str) -> httpx.Response:
    """A GET on the workspace's own host."""
    async with httpx.AsyncClient(base_url=setup.hub.url) as client:
        return await client.get(target, headers={"Host": setup.host(), **headers})


async def enter(setup: Setup, user: str) -> httpx.Response:
    """Follow the IDE entry as ``user``'s browser: the hub's ``/w/<id>/``, the workspace host's start, the hub's
    ticket, the workspace host's enter. The last response (or the first refusal)."""
    session = await login(setup, user)
    async with httpx.AsyncClient(base_url=setup.hub.url, cookies={"codehub_session": session}) as hub:
        r = await hub.get(f"/w/{setup.ws}/", headers={"Accept": "text/html"})
        if r.status_code != 302:
            return r
        start = urlsplit(r.headers["location"])
        r = await on_host(setup, f"{start.path}?{start.query}")
        state = r.cookies["codehub_ws_state"]
        ticket = urlsplit(r.headers["location"])
        r = await hub.get(f"{ticket.path}?{ticket.query}")
        if r.status_code != 302:
            return r
        entry = urlsplit(r.headers["location"])
        assert entry.netloc == setup.host() and parse_qs(entry.query)["ticket"]
        return await on_host(setup, f"{entry.path}?{entry.query}", Cookie=f"codehub_ws_state={state}")


def workspace_cookie(entered: httpx.Response) -> str:
    """The workspace cookie an entry set."""
    assert entered.status_code == 302, entered.text
    return entered.headers.get_list("set-cookie")[0].split(";")[0].split("=", 1)[1]


async def audited(setup: Setup, action: str) -> int:
    """Audit rows of ``action`` on the shared workspace."""
    engine = db.create_engine(setup.hub.settings)
    try:
        async with db.create_sessionmaker(engine)() as session:
            query = select(func.count()).where(AuditEvent.action == action, AuditEvent.workspace_id == setup.ws)
            return int(await session.scalar(query) or 0)
    finally:
        await engine.dispose()


async def test_bad_grants_are_refused_and_nothing_is_written(setup: Setup) -> None:
    for body, status in (
        ({"subject_kind": "robot", "subject_id": 1, "level": "use"}, 400),
        ({"subject_kind": "user", "subject_id": setup.ids["viewer"], "level": "admin"}, 400),
        ({"subject_kind": "user", "subject_id": 999999, "level": "use"}, 404),
        ({"subject_kind": "user", "subject_id": setup.ids["alice"], "level": "use"}, 400),
        ({"subject_kind": "user", "subject_id": setup.ids["viewer"], "level": "use", "extra": 1}, 400),
    ):
        async with setup.client("alice") as client:
            r = await client.post(f"/api/workspaces/{setup.ws}/grants", json=body)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    async with setup.client("alice") as client:
        assert (await client.get(f"/api/workspaces/{setup.ws}/grants")).json()["grants"] == []


async def test_a_stranger_gets_nothing(setup: Setup) -> None:
    async with setup.client("stranger") as client:
        base = f"/api/workspaces/{setup.ws}"
        assert (await client.get(base)).status_code == 404
        assert (await client.get(f"{base}/files/content", params={"path": "a.txt"})).status_code == 404
        assert (await client.get(f"{base}/grants")).status_code == 404
        r = await client.post(f"{base}/grants", json={"subject_kind": "user", "subject_id": 1, "level": "use"})
        assert r.status_code == 404
    assert await terminal_status(setup, "stranger") == 404
    assert (await enter(setup, "stranger")).status_code == 404


async def test_a_viewer_reads_but_cannot_write_exec_open_the_terminal_or_the_ide(setup: Setup) -> None:
    assert (await grant(setup, "user", setup.ids["viewer"], "view")).status_code == 201
    assert await audited(setup, "workspace.grant") >= 1
    base = f"/api/workspaces/{setup.ws}"
    async with setup.client("viewer") as client:
        assert (await client.get(base)).json()["id"] == setup.ws
        assert (await client.get(f"{base}/files/content", params={"path": "a.txt"})).json()["content"] == "one"
        assert (await client.get(f"{base}/files/tree")).status_code == 200
        assert (await client.get(f"{base}/status")).status_code == 200
        assert (await client.get(f"{base}/logs")).status_code == 200
        refused = [
            await client.put(f"{base}/files/content", params={"path": "a.txt"}, content=b"evil"),
            await client.delete(f"{base}/files/content", params={"path": "a.txt"}),
            await client.post(f"{base}/execute", json={"command": "echo hi"}),
            await client.post(f"{base}/stop"),
            await client.delete(base),
            await client.patch(base, json={"name": "mine"}),
            await client.get(f"{base}/grants"),
            await client.post(
                f"{base}/grants", json={"subject_kind": "user", "subject_id": setup.ids["stranger"], "level": "view"}
            ),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
        assert (await client.get(f"{base}/files/content", params={"path": "a.txt"})).json()["content"] == "one"
    assert await terminal_status(setup, "viewer") == 403
    assert (await enter(setup, "viewer")).status_code == 404


async def test_a_user_grantee_works_but_cannot_reshare_stop_or_delete(setup: Setup) -> None:
    assert (await grant(setup, "user", setup.ids["user"], "use")).status_code == 201
    base = f"/api/workspaces/{setup.ws}"
    async with setup.client("user") as client:
        r = await client.put(f"{base}/files/content", params={"path": "b.txt"}, content=b"two")
        assert r.status_code == 201, r.text
        r = await client.post(f"{base}/execute", json={"command": "echo hi"})
        assert r.status_code == 200, r.text
        body = {"subject_kind": "user", "subject_id": setup.ids["stranger"], "level": "use"}
        refused = [
            await client.post(f"{base}/grants", json=body),
            await client.delete(f"{base}/grants/user/{setup.ids['viewer']}"),
            await client.post(f"{base}/stop"),
            await client.delete(base),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    async with setup.client("stranger") as client:
        assert (await client.get(base)).status_code == 404
    cookie = workspace_cookie(await enter(setup, "user"))
    r = await on_host(setup, "/echo?q=1", Cookie=f"codehub_ws={cookie}")
    assert r.status_code == 200 and r.json()["path"] == "/echo"


async def test_a_group_grant_reaches_its_members(setup: Setup) -> None:
    async with setup.hub.client() as admin:
        gid = (await admin.post("/api/admin/groups", json={"name": "share-team"})).json()["id"]
        assert (await admin.put(f"/api/admin/groups/{gid}/members/{setup.ids['member']}")).status_code == 204
    base = f"/api/workspaces/{setup.ws}/files/content"
    async with setup.client("member") as client:
        assert (await client.get(base, params={"path": "a.txt"})).status_code == 404
        assert (await grant(setup, "group", gid, "use")).status_code == 201
        r = await client.put(base, params={"path": "c.txt"}, content=b"three")
        assert r.status_code == 201, r.text
    async with setup.client("alice") as client:
        listed = (await client.get(f"/api/workspaces/{setup.ws}/grants")).json()["grants"]
    assert {"kind": "group", "name": "share-team", "level": "use"} in [
        {"kind": g["subject_kind"], "name": g["subject_name"], "level": g["level"]} for g in listed
    ]


async def test_revoking_closes_the_open_terminal_and_ide_websocket(setup: Setup) -> None:
    uid = setup.ids["user"]
    assert (await grant(setup, "user", uid, "use")).status_code == 201
    cookie = workspace_cookie(await enter(setup, "user"))
    origin = f"http://{setup.host()}"
    ide = await connect(
        f"ws://{setup.host()}/socket",
        host="127.0.0.1",
        additional_headers={"Cookie": f"codehub_ws={cookie}", "Origin": origin},
        open_timeout=20,
    )
    await ide.send("ping")
    assert await ide.recv() == "ping"
    async with open_terminal(setup.hub.url, setup.ws, setup.tokens["user"]) as term:
        await term.send("echo shared-$((2*21))\r")
        await read_until(term, "shared-42")
        async with setup.client("alice") as client:
            present = (await client.get(f"/api/workspaces/{setup.ws}/grants")).json()["present"]
            assert [p["username"] for p in present] == ["user"] and present[0]["connections"] == 2
            assert (await client.delete(f"/api/workspaces/{setup.ws}/grants/user/{uid}")).status_code == 204
            r = await client.delete(f"/api/workspaces/{setup.ws}/grants/user/{uid}")
            assert r.status_code == 404
        for conn in (term, ide):
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await conn.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
    assert await audited(setup, "workspace.revoke") == 1
    assert await terminal_status(setup, "user") == 404
    r = await on_host(setup, "/echo", Cookie=f"codehub_ws={cookie}")
    assert r.status_code == 404


@pytest.fixture(params=["sqlite", "postgres"])
def path_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the path-mode hub."""
    with fresh_database(request.param, tmp_path_factory.mktemp("pathdb")) as url:
        yield url


async def test_path_mode_refuses_sharing_with_the_reason(
    path_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = make_settings(tmp_path_factory.mktemp("pathmode"), database_url=path_db, runtime="local")
    async with running_hub(settings) as hub:
        owner = await hub.new_user("pathowner")
        async with hub.client(owner) as client:
            ws = (await client.post("/api/workspaces", json={"name": "solo"})).json()["id"]
            body = {"subject_kind": "user", "subject_id": 1, "level": "use"}
            for r in (
                await client.post(f"/api/workspaces/{ws}/grants", json=body),
                await client.get(f"/api/workspaces/{ws}/grants"),
                await client.delete(f"/api/workspaces/{ws}/grants/user/1"),
            ):
                assert r.status_code == 409, r.text
                assert json.loads(r.text) == {
                    "error": "sharing_disabled",
                    "detail": "sharing needs an origin per workspace: set CODEHUB_WORKSPACE_DOMAIN",
                }


async def sse_status(setup: Setup, user: str, *topics: str) -> int:
    """The status of subscribing to ``topics`` as ``user`` (the stream is closed at once)."""
    params = [("topic", t) for t in topics]
    async with setup.client(user) as client, client.stream("GET", "/api/events", params=params) as r:
        return r.status_code


async def test_sse_topics_follow_the_grant(setup: Setup) -> None:
    ws = setup.ws
    assert (await grant(setup, "user", setup.ids["viewer"], "view")).status_code == 201
    assert await sse_status(setup, "viewer", f"workspace:{ws}", f"workspace:{ws}:logs") == 200
    assert await sse_status(setup, "viewer", f"workspace:{ws}:exec") == 403  # what commands print: `use` only
    async with setup.client("viewer") as client, client.stream("GET", f"/api/workspaces/{ws}/events") as r:
        assert r.status_code == 200
    assert await sse_status(setup, "stranger", f"workspace:{ws}") == 404
    assert (await grant(setup, "user", setup.ids["user"], "use")).status_code == 201
    assert await sse_status(setup, "user", f"workspace:{ws}:exec") == 200
    async with setup.client("alice") as client:
        r = await client.delete(f"/api/workspaces/{ws}/grants/user/{setup.ids['viewer']}")
        assert r.status_code == 204
    assert await sse_status(setup, "viewer", f"workspace:{ws}:logs") == 404


async def test_grants_changed_and_revoked_at_once_never_fail(setup: Setup) -> None:
    """The owner's tabs granting, changing and revoking one subject's grant at the same moment: each answer is
    201 or 204 (404 for a revocation that found none), never a server error; one upsert per grant."""
    uid = setup.ids["stranger"]
    answers: list[int] = []

    async def one(i: int) -> None:
        if i % 3 == 2:
            async with setup.client("alice") as client:
                answers.append((await client.delete(f"/api/workspaces/{setup.ws}/grants/user/{uid}")).status_code)
        else:
            answers.append((await grant(setup, "user", uid, "view" if i % 2 else "use")).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(one, i)
    assert set(answers) <= {201, 204, 404} and answers.count(201) == 8, answers
    async with setup.client("alice") as client:
        await client.delete(f"/api/workspaces/{setup.ws}/grants/user/{uid}")
