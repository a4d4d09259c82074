"""Fixtures for the isolation attacks: a test-unique hub id, and pairs of running workspaces."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from app.services.runtime.base import Endpoint, WorkspaceSpec
from app.services.runtime.docker import DockerRuntime
from tests.runtime.conftest import make_spec, remove_hub_containers

Started = tuple[WorkspaceSpec, Endpoint]


@pytest.fixture(scope="module")
def hub_id() -> Iterator[str]:
    """A hub id no one else uses; its containers and networks are removed when the module ends."""
    value = f"t-iso-{secrets.token_hex(4)}"
    yield value
    remove_hub_containers(value)


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
