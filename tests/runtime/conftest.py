"""Fixtures for runtime tests: unique hub ids whose containers are removed at the end, and the engines the
hub-level lifecycle tests run on (Docker and Kubernetes alike)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.kubernetes import ensure_volumes, kube_namespace
from tests.support.runtime import RUNTIMES, Engine, remove_hub_containers
from tests.support.services import TEST_IMAGE, need_docker


@pytest.fixture(scope="module")
def hub_id() -> Iterator[str]:
    """A hub id no one else uses; its containers are removed when the module ends."""
    value = f"t-rt-{secrets.token_hex(4)}"
    yield value
    remove_hub_containers(value)


@pytest.fixture(scope="module", params=RUNTIMES)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """The local Docker engine, or a namespace of this module's own on the Kubernetes test cluster."""
    if request.param == "kubernetes":
        ensure_volumes(6)
        async with kube_namespace("rt") as namespace:
            yield Engine("kubernetes", namespace)
        return
    need_docker(TEST_IMAGE)
    yield Engine("docker")
