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
from tests.support.files import Sandbox, make_sandbox
from tests.support.storage import BACKENDS, Backend, docker_portal, drop_backend, make_backend


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    """A workspace root with escaping links, loops and special files, beside an ``outside`` sentinel."""
    return make_sandbox(tmp_path)


@pytest.fixture(scope="session")
def volume_engine() -> Iterator[tuple[BlockingPortal, DockerRuntime, str]]:
    """A Docker runtime on the local engine (in a portal's loop) for the volume backend."""
    with docker_portal() as found:
        yield found


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator[Backend]:
    """The trap-filled sandbox as a local directory, then as a Docker volume (the same tests run on both)."""
    if request.param == "directory":
        with start_blocking_portal() as portal:
            yield make_backend("directory", sandbox, portal, None)
        return
    portal, runtime, _hub_id = request.getfixturevalue("volume_engine")
    made = make_backend("volume", sandbox, portal, runtime)
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
