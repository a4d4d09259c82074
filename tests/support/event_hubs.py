"""Event hub helpers for tests: the hub factory type, reading subscriptions, Redis keys and a private Redis."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import anyio
import pytest
import redis.asyncio as aredis

from app.events import Event
from app.streams.events.fanout import PING
from app.streams.events.hub import Hub
from app.streams.events.subscription import Subscription

HubFactory = Callable[..., AbstractAsyncContextManager[Hub]]


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete this test's keys (never anything else)."""
    client = aredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def take(sub: Subscription, n: int, timeout: float = 5.0) -> list[Event]:
    """The next ``n`` events of ``sub`` (heartbeats skipped)."""
    out: list[Event] = []
    with anyio.fail_after(timeout):
        while len(out) < n:
            batch = await sub.next_batch()
            if batch is None:
                break
            out.extend(item.event for item in batch if item is not PING)
    return out


async def rest(sub: Subscription, timeout: float = 5.0) -> list[Event]:
    """Everything until the subscription ends."""
    return await take(sub, 10**9, timeout)


@contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on ``port`` (no persistence); killed when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not found")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                import redis

                if redis.Redis(port=port, socket_timeout=0.5).ping():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()
