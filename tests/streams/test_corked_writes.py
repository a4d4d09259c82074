"""``DirectWriter.corked``: what a response writes inside the block reaches the socket in one write."""

from __future__ import annotations

import asyncio
from typing import Any

from app.streams.events.direct_http import DirectWriter


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


class Cycle:
    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport


def test_head_and_body_become_one_write_and_the_real_transport_comes_back() -> None:
    real = RecordingTransport()
    cycle = Cycle(real)
    with DirectWriter(cycle).corked():  # type: ignore[arg-type]  # uvicorn's cycle, reduced to its transport
        cycle.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        cycle.transport.write(memoryview(b"ok"))
        assert real.writes == [] and cycle.transport.get_write_buffer_size() == 40
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    assert cycle.transport is real


def test_closing_inside_the_block_sends_what_was_held_first() -> None:
    real = RecordingTransport()
    cycle = Cycle(real)
    with DirectWriter(cycle).corked():  # type: ignore[arg-type]
        cycle.transport.write(b"last words")
        cycle.transport.close()  # uvicorn closes a connection that is not kept alive
        assert cycle.transport.is_closing()
    assert real.writes == [b"last words"] and real.closed


def test_nothing_is_written_to_a_socket_the_client_closed() -> None:
    real = RecordingTransport()
    cycle = Cycle(real)
    with DirectWriter(cycle).corked():  # type: ignore[arg-type]
        cycle.transport.write(b"late")
        real.closed = True
    assert real.writes == []
