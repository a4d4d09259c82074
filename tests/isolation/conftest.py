"""Fixtures for the isolation attacks: a test-unique hub id."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support.runtime import remove_hub_containers


@pytest.fixture(scope="module")
def hub_id() -> Iterator[str]:
    """A hub id no one else uses; its containers and networks are removed when the module ends."""
    value = f"t-iso-{secrets.token_hex(4)}"
    yield value
    remove_hub_containers(value)
