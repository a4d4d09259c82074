"""Fixtures of the AI tests: a fake OpenAI-compatible server running in the test's task group."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.fake_llm import FakeLLM, serve_fake_llm


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """A fresh fake LLM server on a free loopback port."""
    async with serve_fake_llm() as fake:
        yield fake
