"""Output of a command started under a pid-printing wrapper, shared by the Docker and Kubernetes runtimes.

Neither engine can kill an exec: the wrapper prints its pid first and ``exec``s the command, which then
leads its own process group, so a timeout or a consumer that leaves kills the group with ``KILL_GROUP``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio

from app.services.runtime.base import OUTPUT_STREAMS, ExecExit, ExecItem, ExecOutput, ExecRequest, OutputStream
from app.services.runtime.common import OutputCap

KILL_GROUP = 'kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$1"'
HANGUP_GROUP = 'kill -HUP -- "-$1" 2>/dev/null; kill -HUP "$1"'
KILL_GRACE = 5.0
TIMEOUT_EXIT = 137
DEFAULT_SHELL = ("sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi")

Chunk = tuple[OutputStream, bytes]


async def pump_output(
    request: ExecRequest,
    receive: Callable[[], Awaitable[Chunk | None]],
    kill_group: Callable[[int], Awaitable[None]],
    exit_code: Callable[[], Awaitable[int | None]],
) -> AsyncGenerator[ExecItem, None]:
    """``ExecOutput`` chunks read with ``receive`` (``None`` at the end), then one ``ExecExit``.

    The first stdout line is the wrapper's pid. Output past ``max_output_bytes`` is read and dropped
    (``truncated``). At the timeout the group is killed and given ``KILL_GRACE`` to end (exit 137,
    ``timed_out``); a consumer that closes the stream early kills the group too.
    """
    begin = time.monotonic()
    deadline = begin + request.timeout_s
    cap = OutputCap(request.max_output_bytes)
    pid: int | None = None
    head = bytearray()
    timed_out = finished = False
    try:
        while True:
            chunk: Chunk | None = None
            got = False
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                chunk, got = await receive(), True
            if not got:
                if timed_out or pid is None:
                    timed_out = True
                    break
                timed_out = True
                await kill_group(pid)
                deadline = time.monotonic() + KILL_GRACE
                continue
            if chunk is None:
                break
            stream, data = chunk
            if pid is None and stream == "stdout":
                head += data
                if b"\n" not in head:
                    continue
                first, _, data = bytes(head).partition(b"\n")
                pid = int(first) if first.strip().isdigit() else 0
            text = cap.feed(stream, data)
            if text:
                yield ExecOutput(stream, text)
        for stream in OUTPUT_STREAMS:
            rest = cap.flush(stream)
            if rest:
                yield ExecOutput(stream, rest)
        code = await exit_code()
        finished = True
        if timed_out or code is None:
            code = TIMEOUT_EXIT if timed_out else -1
        yield ExecExit(
            exit_code=code,
            duration_ms=int((time.monotonic() - begin) * 1000),
            truncated=cap.truncated,
            timed_out=timed_out,
        )
    finally:
        if not finished and pid:
            with anyio.CancelScope(shield=True):
                await kill_group(pid)
