"""Fixtures for file and patch tests: a trap-filled sandbox, and a guard against hangs (FIFOs)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from app.services.files.patches import clear_cache
from tests.support.files import Sandbox, make_sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    """A workspace root with escaping links, loops and special files, beside an ``outside`` sentinel."""
    return make_sandbox(tmp_path)


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
