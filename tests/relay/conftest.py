"""Relay test fixtures: a hub on a real uvicorn server (SQLite, local runtime) and the programmable upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.databases import fresh_database
from tests.support.relay import RelayHub, start_relay_hub, upstream_process


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
