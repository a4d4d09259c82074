"""Fixtures for file and patch tests: a trap-filled sandbox (also as each storage backend), and a guard against
hangs (FIFOs)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from app.services.files.patches import clear_cache
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.kubernetes.runtime import KubernetesRuntime
from tests.support.files import Sandbox, make_sandbox
from tests.support.storage import BACKENDS, Backend, docker_portal, drop_backend, kube_portal, make_backend


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    """A workspace root with escaping links, loops and special files, beside an ``outside`` sentinel."""
    return make_sandbox(tmp_path)


@pytest.fixture(scope="session")
def volume_engine() -> Iterator[tuple[BlockingPortal, DockerRuntime, str]]:
    """A Docker runtime on the local engine (in a portal's loop) for the volume backend."""
    with docker_portal() as found:
        yield found


@pytest.fixture(scope="session")
def claim_engine() -> Iterator[tuple[BlockingPortal, KubernetesRuntime, dict[str, str]]]:
    """A Kubernetes runtime (in a portal's loop) with a stopped workspace's claim and a running workspace."""
    with kube_portal() as found:
        yield found


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator[Backend]:
    """The trap-filled sandbox as a local directory, a Docker volume, and a Kubernetes claim through a helper pod
    and through the workspace pod (the same tests run on each)."""
    if request.param == "directory":
        with start_blocking_portal() as portal:
            yield make_backend("directory", sandbox, portal, None)
        return
    if request.param == "volume":
        portal, runtime, _hub_id = request.getfixturevalue("volume_engine")
        made = make_backend("volume", sandbox, portal, runtime)
    else:
        portal, runtime, ids = request.getfixturevalue("claim_engine")
        made = make_backend(request.param, sandbox, portal, runtime, ids[request.param])
    try:
        yield made
    finally:
        drop_backend(made, runtime)


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail instead of hanging forever if something opens a FIFO for blocking I/O."""

    def _alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the test hung (blocking open of a FIFO or device?)")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def fresh_parse_cache() -> Iterator[None]:
    """Each test parses its diffs itself."""
    clear_cache()
    yield
    clear_cache()
