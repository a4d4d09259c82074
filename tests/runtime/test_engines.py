"""The runtime registry and the kind and placement decisions of ``Engines`` (no engine is contacted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import SessionMaker, create_engine, create_sessionmaker
from app.errors import ServiceUnavailable
from app.models import RuntimeKind, Server, Workspace
from app.services.runtime.cache import MemoryStatusCache
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.engines import Engines
from app.services.runtime.local import LocalRuntime
from app.services.runtime.registry import RuntimeOptions, runtime_entry
from app.settings import Settings


def engines(tmp_path: Path, runtime: str = "auto", sessionmaker: SessionMaker | None = None) -> Engines:
    settings = Settings(data_dir=tmp_path, runtime=runtime)  # type: ignore[arg-type]
    return Engines(settings, sessionmaker=sessionmaker, cache=MemoryStatusCache())  # type: ignore[arg-type]


def sessionmaker_of(tmp_path: Path, url: str) -> SessionMaker:
    return create_sessionmaker(create_engine(Settings(data_dir=tmp_path, database_url=url)))


def test_docker_and_local_register_themselves(tmp_path: Path) -> None:
    docker, local = runtime_entry(RuntimeKind.DOCKER), runtime_entry(RuntimeKind.LOCAL)
    assert docker.on_servers and not local.on_servers
    options = RuntimeOptions(Settings(data_dir=tmp_path), MemoryStatusCache())
    assert isinstance(local.factory(options), LocalRuntime)
    with pytest.raises(ValueError):
        docker.factory(options)  # a Docker runtime needs its server
    with pytest.raises(ServiceUnavailable) as caught:
        runtime_entry("nope")
    assert caught.value.code == "unknown_runtime"
    assert DockerRuntime.kind == "docker" and LocalRuntime.kind == "local"


@pytest.mark.anyio
async def test_kind_and_placement_decisions(tmp_path: Path, sqlite_url: str) -> None:
    hub = engines(tmp_path, sessionmaker=sessionmaker_of(tmp_path, sqlite_url))
    async with hub._sessionmaker() as session:
        session.add_all(
            [
                Server(id="s1", name="engine", docker_url="unix:///nowhere.sock"),
                Server(id="k1", name="cluster", kind="kubernetes", kubeconfig="/k", namespace="n"),
            ]
        )
        await session.commit()
    assert hub.default_kind == "local" and not hub.new_workspaces_need_server()
    assert await hub.kind_to_start(Workspace(runtime=None, server_id=None)) == "local"
    assert await hub.kind_to_start(Workspace(runtime=None, server_id="s1")) == "docker"
    assert await hub.kind_to_start(Workspace(runtime=None, server_id="k1")) == "kubernetes"
    assert await hub.kind_to_start(Workspace(runtime="local", server_id="s1")) == "local"
    with pytest.raises(ServiceUnavailable):
        await hub.kind_of_server("gone")
    assert hub.needs_server("docker") and not hub.needs_server("local")
    hub.server_added()
    assert hub.default_kind == "docker" and hub.new_workspaces_need_server()

    pinned = engines(tmp_path, runtime="local")
    pinned.server_added()
    assert pinned.default_kind == "local" and not pinned.new_workspaces_need_server()


@pytest.mark.anyio
async def test_runtime_kubernetes_registers_its_cluster_once(tmp_path: Path, sqlite_url: str) -> None:
    """``CODEHUB_RUNTIME=kubernetes``: the namespace of ``CODEHUB_KUBECONFIG`` becomes the default server, once
    (nothing is contacted at boot)."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        runtime="kubernetes",
        kubeconfig="/k/config",
        kube_namespace="team-a",
    )
    sessionmaker = sessionmaker_of(tmp_path, sqlite_url)
    for _boot in range(2):
        async with Engines(settings, sessionmaker, MemoryStatusCache()) as hub:
            await hub.boot()
            assert hub.default_kind == "kubernetes" and hub.new_workspaces_need_server()
    async with sessionmaker() as session:
        rows = [(s.kind, s.kubeconfig, s.namespace, s.is_default) for s in await session.scalars(select(Server))]
    assert rows == [("kubernetes", "/k/config", "team-a", True)]
