"""Relay test fixtures: a hub on a real uvicorn server (SQLite, local runtime) and the programmable upstream;
hubs whose workspaces are real containers (the test image's ``wsecho``) on Docker or pods on the Kubernetes test
cluster, in each WebSocket mode, and a workspace running on them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from app.factory import create_app
from app.settings import Settings
from app.streams.relay.splice import SpliceProtocol
from tests.support.databases import fresh_database
from tests.support.kubernetes import ensure_volumes, kube_namespace
from tests.support.lifecycle import wait_state
from tests.support.relay import RelayHub, start_relay_hub, upstream_process
from tests.support.runtime import RUNTIMES, remove_hub_containers
from tests.support.server import admin_token, serve_asgi
from tests.support.settings import docker_settings, kube_settings

CONTAINER_HUBS = [(runtime, mode) for runtime in RUNTIMES for mode in ("splice", "frames")]


@pytest.fixture(scope="module")
def relay_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated SQLite database for this module's hub."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("relaydb")) as url:
        yield url


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The programmable upstream, running for the whole module (``host:port``)."""
    with upstream_process() as (_, address):
        yield address


@pytest.fixture(scope="module")
async def relay_hub(relay_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RelayHub]:
    """The relay hub, serving WebSockets as in production (spliced)."""
    async with start_relay_hub(relay_db, tmp_path_factory.mktemp("data")) as hub:
        yield hub


@pytest.fixture(scope="module", params=CONTAINER_HUBS, ids=lambda p: "-".join(p))
def container_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str, Path]]:
    """A runtime, a WebSocket mode, and a database and a data directory for their hub."""
    data = tmp_path_factory.mktemp("data")
    with fresh_database("sqlite", data) as url:
        yield *request.param, url, data


@pytest.fixture(scope="module")
async def container_hub(container_db: tuple[str, str, str, Path]) -> AsyncIterator[RelayHub]:
    """A hub running the test image on the local Docker engine or in a namespace of its own on the test cluster,
    serving WebSockets spliced (as ``codehub serve``) or as relayed messages; its workspaces go at the end."""
    runtime, mode, url, data = container_db
    overrides = {"start_timeout": 30, "stop_grace": 2, "idle_timeout": 0}
    if runtime == "kubernetes":
        ensure_volumes(2)
        async with (
            kube_namespace("relay") as namespace,
            _serve(kube_settings(data, url, namespace, **overrides), mode) as hub,
        ):
            yield hub
        return
    settings = docker_settings(data, url, **overrides)
    try:
        async with _serve(settings, mode) as hub:
            yield hub
    finally:
        remove_hub_containers(settings.hub_id)


@asynccontextmanager
async def _serve(settings: Settings, mode: str) -> AsyncIterator[RelayHub]:
    token = await admin_token(settings)
    app = create_app(settings)
    async with serve_asgi(app, ws=SpliceProtocol if mode == "splice" else "websockets-sansio") as base:
        hub = RelayHub(base, settings, token, app=app, ws_url=base.replace("http://", "ws://"), mode=mode)
        hub.alice = await hub.new_user("alice")
        hub.bob = await hub.new_user("bob")
        yield hub


@pytest.fixture(scope="module")
async def running_ws(container_hub: RelayHub) -> str:
    """Alice's workspace, started by the lifecycle (a wsecho container or pod)."""
    async with container_hub.client(container_hub.alice) as client:
        ws = (await client.post("/api/workspaces", json={"name": "container-relay"})).json()["id"]
        await client.post(f"/api/workspaces/{ws}/start")
        body = await wait_state(client, ws, {"running", "failed"}, timeout=60)
        assert body["state"] == "running", body["state_reason"]
    return ws
