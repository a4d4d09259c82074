"""Users of the OpenID provider on a real database: keyed by (issuer, subject), never by e-mail or name;
concurrent first sign-ins make one user; group sync leaves local groups alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from app import db
from app.models import Group, User, UserGroup, UserIdentity
from app.services.audit.log import AuditEntry, AuditLog, verify_chain
from app.services.auth.identities import LOCAL_SOURCE, IdentityService, ensure_groups
from app.services.auth.oidc import OidcIdentity
from app.services.auth.users import AuthService
from tests.support.databases import fresh_database
from tests.support.services import need_postgres
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio
ISSUER = "https://id.example.test"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each kind."""
    if request.param == "postgres":
        need_postgres()
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def identities(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[IdentityService, db.SessionMaker]]:
    """The identity service on that database (admin groups: ``admins``)."""
    settings = make_settings(tmp_path, database_url=db_url, oidc_admin_groups=("admins",))
    engine = db.create_engine(settings)
    sessionmaker = db.create_sessionmaker(engine)
    try:
        yield IdentityService(sessionmaker, settings, AuthService(sessionmaker, settings)), sessionmaker
    finally:
        await engine.dispose()


def _identity(subject: str, *, issuer: str = ISSUER, name: str = "alice", groups: tuple[str, ...] = ()) -> OidcIdentity:
    return OidcIdentity(issuer, subject, name, f"{name}@example.test", name.title(), groups)


async def test_same_email_or_name_with_another_subject_is_another_user(
    identities: tuple[IdentityService, db.SessionMaker],
) -> None:
    service, _ = identities
    alice = await service.sign_in(_identity("s-1"))
    impostor = await service.sign_in(_identity("s-2"))  # same preferred_username and e-mail, other subject
    other_issuer = await service.sign_in(_identity("s-1", issuer="https://other.example.test"))
    assert len({alice.id, impostor.id, other_issuer.id}) == 3
    assert (alice.username, impostor.username, other_issuer.username) == ("alice", "alice-2", "alice-3")
    again = await service.sign_in(_identity("s-1", name="renamed"))  # hints may change: still the same user
    assert again.id == alice.id and again.username == "alice"


async def test_hints_that_make_no_username_fall_back(identities: tuple[IdentityService, db.SessionMaker]) -> None:
    service, _ = identities
    weird = OidcIdentity(ISSUER, "s-9", "  ../..  ", "+++@x", "€€", ())
    assert (await service.sign_in(weird)).username == "user"


async def test_concurrent_first_sign_ins_make_one_user(identities: tuple[IdentityService, db.SessionMaker]) -> None:
    service, sessionmaker = identities
    users: list[int] = []

    async def sign_in() -> None:
        users.append((await service.sign_in(_identity("s-race", groups=("devs", "ops")))).id)

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(sign_in)
    assert len(set(users)) == 1
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count(UserIdentity.id))) == 1
        assert await session.scalar(select(func.count(User.id))) == 1
        assert await session.scalar(select(func.count(Group.id))) == 2
        assert await session.scalar(select(func.count()).select_from(UserGroup)) == 2


async def test_sync_replaces_provider_groups_and_keeps_local_ones(
    identities: tuple[IdentityService, db.SessionMaker],
) -> None:
    service, sessionmaker = identities
    user = await service.sign_in(_identity("s-1", groups=("devs", "admins")))
    assert user.role == "admin"
    async with sessionmaker() as session:
        [local] = await ensure_groups(session, ("devs",), LOCAL_SOURCE)  # a local group with a provider's name
        session.add(UserGroup(user_id=user.id, group_id=local.id))
        await session.commit()
    user = await service.sign_in(_identity("s-1", groups=("ops",)))
    assert user.role == "user"
    groups = [(g.source, g.name) for g in await service.groups_of(user.id)]
    assert groups == [("local", "devs"), ("oidc", "ops")]


async def test_a_burst_of_audited_sign_ins_and_audit_records_finishes(
    identities: tuple[IdentityService, db.SessionMaker],
) -> None:
    """Returning users signing in (each sign-in audited in its own transaction) while other requests append
    to the audit chain, more at once than the pool has connections: a sign-in never waits for the audit
    lock while its transaction holds a connection (and, on SQLite, the write lock) that the lock's holder
    needs."""
    service, sessionmaker = identities
    audit = AuditLog(sessionmaker)
    people = [_identity(f"s-burst-{n}", name=f"burst{n}") for n in range(20)]
    for person in people:
        await service.sign_in(person)  # known users: the burst's sign-ins update their rows
    signed: list[int] = []

    async def sign_in(person: OidcIdentity) -> None:
        user, _, _ = await service.sign_in_with_session(person, audit, AuditEntry("auth.sso_login"))
        signed.append(user.id)

    async def other_request(n: int) -> None:
        await audit.record(AuditEntry("workspace.create", target=f"w{n}"))

    with anyio.fail_after(20):  # the pool gives up on a waiting checkout, SQLite on a busy lock, after 30 s
        async with anyio.create_task_group() as tg:
            for n, person in enumerate(people):
                tg.start_soon(other_request, n)
                tg.start_soon(sign_in, person)
    assert len(set(signed)) == 20
    report = await verify_chain(sessionmaker)
    assert report.ok and report.checked == 40
