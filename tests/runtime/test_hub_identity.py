"""Each deployment's hub id comes from its own database, and two deployments on one engine leave each other's
containers alone: only what carries this deployment's id and has no workspace in its database is an orphan."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app import db
from tests.support.databases import fresh_database
from tests.support.lifecycle import create
from tests.support.runtime import containers, remove_hub_containers
from tests.support.server import running_hub
from tests.support.services import TEST_IMAGE
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def two_databases(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh deployments' databases (migrated apart, so each got its own hub id)."""
    with fresh_database("sqlite", tmp_path) as one, fresh_database("sqlite", tmp_path) as two:
        yield one, two


async def _hub_id(url: str) -> str:
    engine = create_async_engine(url)
    try:
        return await db.deployment_hub_id(engine)
    finally:
        await engine.dispose()


async def test_every_database_gets_its_own_random_hub_id(two_databases: tuple[str, str]) -> None:
    first, second = await _hub_id(two_databases[0]), await _hub_id(two_databases[1])
    assert first != second
    assert all(re.fullmatch(r"hub-[0-9a-f]{16}", value) for value in (first, second))


async def test_two_hubs_on_one_engine_leave_each_other_alone(two_databases: tuple[str, str], tmp_path: Path) -> None:
    url_a, url_b = two_databases
    id_a, id_b = await _hub_id(url_a), await _hub_id(url_b)
    # no CODEHUB_HUB_ID: each hub labels with the id its database was created with
    settings_a = docker_settings(tmp_path / "a", url_a, hub_id="")
    settings_b = docker_settings(tmp_path / "b", url_b, hub_id="")
    ghost = f"codehub-ghost-{id_a}"
    try:
        async with running_hub(settings_a) as hub_a, running_hub(settings_b) as hub_b:
            started = {}
            for hub, label in ((hub_a, id_a), (hub_b, id_b)):
                async with hub.client() as client:
                    ws = await create(client, "mine")
                    r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
                    assert r.json()["state"] == "running", r.text
                    [row] = containers(f"codehub.workspace={ws['id']}")
                    assert f"codehub.hub={label}" in row["Labels"]
                    started[label] = ws["id"]
            # A's orphan: its id, no workspace in A's database; B must not touch it either way
            run = ["docker", "run", "-d", "--name", ghost, "--label", f"codehub.hub={id_a}"]
            subprocess.run([*run, "--label", "codehub.workspace=ghost000", TEST_IMAGE], check=True, capture_output=True)
            with anyio.fail_after(20):
                while any(row["Names"] == ghost for row in containers(f"codehub.hub={id_a}")):
                    await anyio.sleep(0.25)
            # several reconcile passes and orphan graces later, every workspace still runs
            await anyio.sleep(3)
            for label, workspace_id in started.items():
                [row] = containers(f"codehub.workspace={workspace_id}")
                assert row["State"] == "running" and f"codehub.hub={label}" in row["Labels"]
    finally:
        subprocess.run(["docker", "rm", "-f", ghost], capture_output=True)
        remove_hub_containers(id_a)
        remove_hub_containers(id_b)
