"""Templates on the real Docker engine: a workspace started from one gets its variables and secrets, runs its
startup command and is placed only on servers with its labels; an image the server lacks is refused at create;
admins see where images are and pre-pull with progress events; secret values never reach responses, events,
the audit log, the hub's logs or the database file."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.databases import fresh_database
from tests.support.lifecycle import wait_state
from tests.support.runtime import remove_hub_containers
from tests.support.server import Hub, running_hub
from tests.support.services import TEST_IMAGE
from tests.support.settings import docker_settings
from tests.support.sse_client import SSEStream

pytestmark = pytest.mark.anyio
ABSENT_IMAGE = f"127.0.0.1:1/codehub-absent-{secrets.token_hex(4)}:none"  # a refused registry: fails at once


class Collected(logging.Handler):
    """Every log line of the hub, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s").format(record) + repr(record.args))


@pytest.fixture(scope="module")
def sqlite_file_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated SQLite database of this module's own (its file is read back by the leak test)."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("tpl-db")) as url:
        yield url


@pytest.fixture(scope="module")
async def docker_hub(
    sqlite_file_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Hub, Collected, Path]]:
    """A hub on Docker over its own SQLite file, logging at debug into a collector."""
    settings = docker_settings(
        tmp_path_factory.mktemp("tpl-data"), sqlite_file_url, log_level="debug", idle_warning=0.5
    )
    collected = Collected()
    try:
        async with running_hub(settings) as hub:
            root = logging.getLogger()
            root.addHandler(collected)
            try:
                yield hub, collected, Path(sqlite_file_url.split("///", 1)[1])
            finally:
                root.removeHandler(collected)
    finally:
        remove_hub_containers(settings.hub_id)


async def admin_events(
    client: httpx.AsyncClient, done: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    """The admin topic from the start of its history until an event ``done`` accepts (inclusive)."""
    seen: list[dict[str, Any]] = []
    params = {"topic": "admin", "since": "earliest"}
    headers = {"Accept": "text/event-stream"}
    async with client.stream("GET", "/api/events", params=params, headers=headers, timeout=None) as response:
        assert response.status_code == 200
        stream = SSEStream(response)
        with anyio.fail_after(timeout):
            while True:
                frame = await stream.next(timeout)
                if frame.event is None or frame.data is None:
                    continue
                seen.append(frame.data)
                if done(frame.data):
                    return seen


def pull_events(events: list[dict[str, Any]], pull_id: str) -> list[str]:
    return [e["type"] for e in events if e["type"].startswith("template.pull") and e["data"]["pull_id"] == pull_id]


async def test_an_image_the_server_lacks_is_refused_at_create(docker_hub: tuple[Hub, Collected, Path]) -> None:
    hub, _, _ = docker_hub
    token = await hub.new_user("tpl-absent")
    async with hub.client() as admin:
        tpl = (await admin.post("/api/admin/templates", json={"name": "absent", "image": ABSENT_IMAGE})).json()
        where = (await admin.get(f"/api/admin/templates/{tpl['id']}/images")).json()
        assert where["pull_allowed"] is False and [s["present"] for s in where["servers"]] == [False]
        present = (await admin.get("/api/admin/templates/default/images")).json()
        assert [s["present"] for s in present["servers"]] == [True]  # the default template runs the hub's image
    async with hub.client(token) as user:
        with anyio.fail_after(5):  # at once, not after a start attempt
            r = await user.post("/api/workspaces", json={"name": "never", "template": "absent"})
        assert r.status_code == 422 and r.json()["error"] == "image_missing"
        assert "pre-pull it" in r.json()["detail"] and "ask an admin" in r.json()["detail"]
        assert (await user.get("/api/workspaces")).json()["items"] == []


async def test_pre_pulls_report_progress_on_the_admin_topic(docker_hub: tuple[Hub, Collected, Path]) -> None:
    hub, _, _ = docker_hub
    async with hub.client() as admin:
        r = await admin.post("/api/admin/templates/default/pull", json={})
        assert r.status_code == 202, r.text
        pull = r.json()
        assert len(pull["server_ids"]) == 1 and pull["image"] == TEST_IMAGE
        events = await admin_events(
            admin, lambda e: e["type"] == "template.pull.done" and e["data"]["pull_id"] == pull["pull_id"]
        )
        assert pull_events(events, pull["pull_id"]) == [
            "template.pull.started",
            "template.pull.progress",
            "template.pull.done",
        ]

        await admin.post("/api/admin/templates", json={"name": "unpullable", "image": ABSENT_IMAGE})
        pull = (await admin.post("/api/admin/templates/unpullable/pull")).json()
        events = await admin_events(
            admin, lambda e: e["type"] == "template.pull.failed" and e["data"]["pull_id"] == pull["pull_id"]
        )
        failed = events[-1]["data"]
        assert failed["image"] == ABSENT_IMAGE and "pulling it failed" in failed["error"]
        r = await admin.post("/api/admin/templates/unpullable/pull", json={"server_ids": ["nosuchserver"]})
        assert r.status_code == 422


async def test_started_workspaces_get_variables_and_secrets_that_never_leak(
    docker_hub: tuple[Hub, Collected, Path],
) -> None:
    hub, collected, db_file = docker_hub
    first, second = f"first-{secrets.token_hex(12)}", f"second-{secrets.token_hex(12)}"
    token = await hub.new_user("tpl-runner")
    seen: list[str] = []
    async with hub.client() as admin:
        body = {
            "name": "secretive",
            "image": TEST_IMAGE,
            "max_cpu": 1,
            "max_memory_mb": 512,
            "default_memory_mb": 256,
            "env": {"GREETING": "hello world"},
            "secrets": {"API_TOKEN": first},
            "dotfiles_url": "https://git.example.org/me/dotfiles.git",
        }
        r = await admin.post("/api/admin/templates", json=body)
        assert r.status_code == 201, r.text
        seen.append(r.text)
        marker = f"refused-{first}"
        for bad in (
            {**body, "name": "refused", "secrets": {"API_TOKEN": marker * 400}},  # too long
            {**body, "name": "refused", "secrets": {"API_TOKEN": marker}, "env": {"API_TOKEN": "x"}},
            {**body, "name": "refused", "secrets": {"CODEHUB_X": marker}},
            {**body, "name": "refused", "secrets": {"API_TOKEN": marker}, "surprise": marker},
        ):
            r = await admin.post("/api/admin/templates", json=bad)
            assert r.status_code in (400, 422) and marker not in r.text, r.text
            seen.append(r.text)
    async with hub.client(token) as user:
        ws = (await user.post("/api/workspaces", json={"name": "sealed", "template": "secretive"})).json()
        r = await user.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
        out = (await user.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "env"})).json()["stdout"]
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert env["GREETING"] == "hello world" and env["API_TOKEN"] == first
        assert env["CODEHUB_WORKSPACE_ID"] == ws["id"]
        assert env["CODEHUB_DOTFILES_URL"] == "https://git.example.org/me/dotfiles.git"
    async with hub.client() as admin:
        r = await admin.patch("/api/admin/templates/secretive", json={"secrets": {"API_TOKEN": second}})
        assert r.json()["version"] == 2
        seen.append(r.text)
    async with hub.client(token) as user:  # the workspace keeps running the version it was made from
        r = await user.post(f"/api/workspaces/{ws['id']}/restart", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
        out = (await user.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "env"})).json()["stdout"]
        assert f"API_TOKEN={first}" in out and second not in out
        seen.append((await user.get(f"/api/workspaces/{ws['id']}")).text)
        seen.append((await user.get("/api/templates")).text)
        assert (await user.delete(f"/api/workspaces/{ws['id']}")).status_code == 204
    async with hub.client() as admin:
        for path in ("/api/admin/templates", "/api/admin/templates/secretive/versions", "/api/admin/audit"):
            r = await admin.get(path)
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
        events = await admin_events(admin, lambda e: e["type"] == "workspace.deleted")
        seen.append(str(events))
    assert any("secretive" in line for line in collected.lines)  # the collector does see the hub's logs
    stored = db_file.read_bytes() + (
        db_file.with_name(db_file.name + "-wal").read_bytes()
        if db_file.with_name(db_file.name + "-wal").exists()
        else b""
    )
    assert b"secretive" in stored and b"API_TOKEN" in stored  # the right file, names in clear, values not
    for secret in (first, second):
        assert all(secret not in text for text in seen)
        assert all(secret not in line for line in collected.lines)
        assert secret.encode() not in stored


async def test_a_template_idle_timeout_stops_its_workspaces(docker_hub: tuple[Hub, Collected, Path]) -> None:
    hub, _, _ = docker_hub
    token = await hub.new_user("tpl-idle")
    async with hub.client() as admin:
        body = {"name": "sleepy", "image": TEST_IMAGE, "max_memory_mb": 512, "default_memory_mb": 256}
        assert (await admin.post("/api/admin/templates", json={**body, "idle_timeout": 2})).status_code == 201
    async with hub.client(token) as user:
        ws = (await user.post("/api/workspaces", json={"name": "nap", "template": "sleepy"})).json()
        r = await user.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
        assert r.json()["state"] == "running", r.text
        stopped = await wait_state(user, ws["id"], {"stopped"}, timeout=30)
        assert stopped["state_reason"] == "idle"
        assert (await user.delete(f"/api/workspaces/{ws['id']}")).status_code == 204


async def test_a_template_runs_its_command_on_servers_with_its_labels(docker_hub: tuple[Hub, Collected, Path]) -> None:
    """A template's ``server_labels`` pick its servers (none labelled: 503 naming the labels; a server without
    them named: 422); on a labelled server its startup command is what the container runs."""
    hub, _, _ = docker_hub
    tier = f"t-{secrets.token_hex(3)}"
    token = await hub.new_user("tpl-labels")
    async with hub.client() as admin:
        body = {
            "name": "labelled",
            "image": TEST_IMAGE,
            "max_memory_mb": 512,
            "default_memory_mb": 256,
            "server_labels": {"tier": tier},
            "command": f"sh -c 'echo started-{tier} > /tmp/started && exec /usr/local/bin/wsecho 8080'",
        }
        assert (await admin.post("/api/admin/templates", json=body)).status_code == 201
        server = next(s for s in (await admin.get("/api/admin/servers")).json() if s["is_default"])
        r = await admin.post(
            "/api/workspaces", json={"name": "named", "template": "labelled", "server_id": server["id"]}
        )
        assert r.status_code == 422 and r.json()["error"] == "server_not_allowed", r.text
        assert f"tier={tier}" in r.json()["detail"]
    async with hub.client(token) as user:
        r = await user.post("/api/workspaces", json={"name": "nowhere", "template": "labelled"})
        assert r.status_code == 503 and r.json()["error"] == "no_capacity", r.text
        assert f"tier={tier}" in r.json()["detail"] and "label a server" in r.json()["detail"]
    async with hub.client() as admin:
        labels = {**server["labels"], "tier": tier}
        assert (await admin.patch(f"/api/admin/servers/{server['id']}", json={"labels": labels})).status_code == 200
    try:
        async with hub.client(token) as user:
            r = await user.post("/api/workspaces", json={"name": "placed", "template": "labelled"})
            assert r.status_code == 201 and r.json()["server_id"] == server["id"], r.text
            ws = r.json()
            r = await user.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
            assert r.json()["state"] == "running", r.text
            r = await user.post(f"/api/workspaces/{ws['id']}/execute", json={"command": "cat /tmp/started"})
            assert r.json()["stdout"].strip() == f"started-{tier}", r.text
            assert (await user.delete(f"/api/workspaces/{ws['id']}")).status_code == 204
    finally:
        async with hub.client() as admin:
            await admin.patch(f"/api/admin/servers/{server['id']}", json={"labels": server["labels"]})


async def test_an_absent_image_is_accepted_at_create_when_the_hub_pulls(sqlite_url: str, tmp_path: Path) -> None:
    """With ``CODEHUB_PULL_IMAGES=true`` an image the server lacks is no reason to refuse: it is pulled at start."""
    settings = docker_settings(tmp_path / "data", sqlite_url, pull_images=True)
    try:
        async with running_hub(settings) as hub:
            token = await hub.new_user("tpl-puller")
            async with hub.client() as admin:
                tpl = (await admin.post("/api/admin/templates", json={"name": "later", "image": ABSENT_IMAGE})).json()
                where = (await admin.get(f"/api/admin/templates/{tpl['id']}/images")).json()
                assert where["pull_allowed"] is True and [s["present"] for s in where["servers"]] == [False]
            async with hub.client(token) as user:
                r = await user.post("/api/workspaces", json={"name": "pulled-later", "template": "later"})
                assert r.status_code == 201, r.text
                assert r.json()["image"] == ABSENT_IMAGE and r.json()["template_version"] == 1
    finally:
        remove_hub_containers(settings.hub_id)
