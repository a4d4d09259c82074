"""The helpers a start is built from: overlapping steps, and probing an IDE until it answers."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import SocketStream

from app.services.runtime.common import ProcessExited, concurrently, ide_healthy, wait_until_ready

pytestmark = pytest.mark.anyio


async def test_concurrently_returns_each_result_in_order() -> None:
    async def later(value: int, delay: float) -> int:
        await anyio.sleep(delay)
        return value

    assert await concurrently(lambda: later(1, 0.02), lambda: later(2, 0), lambda: later(3, 0.01)) == [1, 2, 3]


async def test_concurrently_raises_the_first_failure_itself_and_cancels_the_rest() -> None:
    cancelled = anyio.Event()

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async def fail() -> None:
        raise TimeoutError("the IDE did not answer")

    with pytest.raises(TimeoutError, match="did not answer"):  # not an exception group: callers catch it as is
        await concurrently(forever, fail)
    assert cancelled.is_set()


async def _answer(stream: SocketStream) -> None:
    async with stream:
        await stream.receive()
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


async def test_readiness_waits_for_an_ide_that_starts_listening_late() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as probe:
        port = probe.extra(anyio.abc.SocketAttribute.local_port)
    url = f"http://127.0.0.1:{port}"
    assert not await ide_healthy(url, limit=1)
    async with anyio.create_task_group() as tg:

        async def listen_later() -> None:
            await anyio.sleep(0.2)  # a few refused probes first
            async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port) as listener:
                await listener.serve(_answer)

        async def alive() -> bool:
            return True

        tg.start_soon(listen_later)
        with anyio.fail_after(10):
            await wait_until_ready(url, within=10, alive=alive)
        assert await ide_healthy(url, limit=2)
        tg.cancel_scope.cancel()


async def test_readiness_gives_up_when_the_process_is_gone_or_time_is_up() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as probe:
        port = probe.extra(anyio.abc.SocketAttribute.local_port)

    async def dead() -> bool:
        return False

    async def alive() -> bool:
        return True

    with pytest.raises(ProcessExited):
        await wait_until_ready(f"http://127.0.0.1:{port}", within=10, alive=dead, alive_every=0.05)
    with pytest.raises(TimeoutError):
        await wait_until_ready(f"http://127.0.0.1:{port}", within=0.2, alive=alive)
