"""Fixtures for runtime tests: unique hub ids whose containers are removed at the end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support.runtime import remove_hub_containers


@pytest.fixture(scope="module")
def hub_id() -> Iterator[str]:
    """A hub id no one else uses; its containers are removed when the module ends."""
    value = f"t-rt-{secrets.token_hex(4)}"
    yield value
    remove_hub_containers(value)
