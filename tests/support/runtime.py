"""Runtime helpers for tests: the fake IDE command, workspace specs and ids, running pairs, the containers and
networks of a test hub id, and ``Engine``: a hub's settings and what it left, on Docker or Kubernetes alike."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.services.runtime.base import Endpoint, StorageRef, WorkspaceSpec
from app.services.runtime.docker import DockerRuntime
from app.settings import Settings
from tests.support.kubernetes import claims, pods
from tests.support.services import TEST_IMAGE
from tests.support.settings import docker_settings, kube_settings

FAKE_IDE = Path(__file__).resolve().with_name("fake_ide.py")
RUNTIMES = ["docker", "kubernetes"]
"""The container runtimes the runtime-level tests run on (``runtime`` fixtures are parametrized with them)."""
Started = tuple[WorkspaceSpec, Endpoint]


def fake_ide_command() -> str:
    """``local_ide_command`` that runs the fake IDE with this venv's Python."""
    return f"{sys.executable} {FAKE_IDE} --port {{port}} {{dir}}"


def new_workspace_id() -> str:
    """A fresh workspace id (lowercase letters and digits, starts with a letter)."""
    return "w" + secrets.token_hex(5)


def make_spec(hub_id: str, tmp: Path, **overrides: object) -> WorkspaceSpec:
    """A small workspace of the test image."""
    values: dict[str, object] = {
        "id": new_workspace_id(),
        "owner": "7",
        "image": TEST_IMAGE,
        "hub_id": hub_id,
        "storage": StorageRef.directory(str(tmp / "ws")),
        "mount": "/workspace",
        "cpu": 0.5,
        "memory_mb": 256,
        "pids_limit": 128,
        "env": {"FOO": "bar"},
    }
    values.update(overrides)
    return WorkspaceSpec(**values)  # type: ignore[arg-type]


def spec_for(runtime: Any, hub_id: str, tmp: Path, **overrides: object) -> WorkspaceSpec:
    """``make_spec`` for ``runtime``: a Kubernetes workspace keeps its files in its claim, not a directory."""
    if isinstance(runtime, DockerRuntime):
        return make_spec(hub_id, tmp, **overrides)
    workspace_id = str(overrides.pop("id", new_workspace_id()))
    return make_spec(hub_id, tmp, id=workspace_id, storage=runtime.storage_ref(workspace_id), **overrides)


def project_of(spec: WorkspaceSpec) -> str:
    """The project directory inside the workspace (a bind mount, or ``<home>/project`` of a volume or claim)."""
    return spec.mount if spec.storage.kind == "directory" else f"{spec.home.rstrip('/')}/project"


@asynccontextmanager
async def running_pair(
    runtime: DockerRuntime, hub_id: str, tmp: pytest.TempPathFactory
) -> AsyncIterator[tuple[Started, Started]]:
    """Two running workspaces of the test image (two owners) on ``runtime``, removed afterwards."""
    specs = [make_spec(hub_id, tmp.mktemp("ws"), owner=owner) for owner in ("1", "2")]
    started: list[Started] = []
    try:
        for spec in specs:
            started.append((spec, await runtime.start(spec, ready_timeout=30)))
        yield started[0], started[1]
    finally:
        for spec in specs:
            await runtime.remove(spec.id)


def containers(label: str) -> list[dict[str, Any]]:
    """``docker ps -a`` rows (as dicts) carrying ``label``."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={label}", "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line]


def sweep_hubs(hub_ids: set[str], docker_hosts: tuple[str | None, ...]) -> None:
    """Remove the containers and networks any of ``hub_ids`` left on these engines (one listing of each per
    engine; an engine that does not answer is skipped)."""
    label = ["--filter", "label=codehub.hub", "--format", '{{.ID}} {{.Label "codehub.hub"}}']
    for host in docker_hosts:
        docker = ["docker", *(["-H", host] if host else [])]
        for listing, remove in ((["ps", "-a"], ["rm", "-f"]), (["network", "ls"], ["network", "rm"])):
            try:
                listed = subprocess.run([*docker, *listing, *label], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                break
            ids = [f[0] for f in map(str.split, listed.stdout.splitlines()) if len(f) == 2 and f[1] in hub_ids]
            if ids:
                subprocess.run([*docker, *remove, *ids], capture_output=True, timeout=120)


def remove_hub_containers(hub_id: str, docker_host: str | None = None) -> None:
    """Force-remove every container labelled with this (test-unique) hub id, then its networks and volumes."""
    docker = ["docker", *(["-H", docker_host] if docker_host else [])]
    listed = subprocess.run(
        [*docker, "ps", "-aq", "--filter", f"label=codehub.hub={hub_id}"], capture_output=True, text=True
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run([*docker, "rm", "-f", *ids], capture_output=True)
    for kind in ("network", "volume"):
        found = subprocess.run(
            [*docker, kind, "ls", "-q", "--filter", f"label=codehub.hub={hub_id}"], capture_output=True, text=True
        )
        if found.stdout.split():
            subprocess.run([*docker, kind, "rm", *found.stdout.split()], capture_output=True)


@dataclass
class Engine:
    """One runtime under test (one of ``RUNTIMES``): a hub's settings for it, and what the hub has on it."""

    kind: str
    namespace: str = ""
    """The Kubernetes namespace of the test cluster the hub's workspaces go to."""

    def settings(self, data_dir: Path, database_url: str, **overrides: Any) -> Settings:
        """A hub whose default server is this engine (the local Docker engine, or the namespace)."""
        if self.kind == "kubernetes":
            return kube_settings(data_dir, database_url, self.namespace, **overrides)
        return docker_settings(data_dir, database_url, **overrides)

    async def running(self, label: str) -> list[tuple[str, bool]]:
        """(name, running) of the workspace containers or pods carrying ``label`` (a pod being deleted is gone)."""
        if self.kind == "kubernetes":
            return [(str(p["name"]), bool(p["running"])) for p in await pods(self.namespace, label)]
        return [(c["Names"], c["State"] == "running") for c in containers(label)]

    async def homes(self, hub_id: str) -> list[str]:
        """The workspace homes this hub deployment has on the engine (claims; Docker volumes are not checked)."""
        return await claims(self.namespace, f"codehub.hub={hub_id}") if self.kind == "kubernetes" else []
