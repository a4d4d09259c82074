"""Commands in a local workspace: own session (so a timeout kills every child), capped, streamed."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from subprocess import DEVNULL, PIPE

import anyio
from anyio.abc import ByteReceiveStream, TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from app.services.runtime import local_support as ls
from app.services.runtime.base import OUTPUT_STREAMS, ExecExit, ExecItem, ExecOutput, ExecRequest, OutputStream
from app.services.runtime.common import OutputCap
from app.services.runtime.exec_output import KILL_GRACE, TIMEOUT_EXIT


async def exec_stream(
    tg: TaskGroup, request: ExecRequest, *, cwd: Path, env: dict[str, str]
) -> AsyncIterator[ExecItem]:
    """Run ``request`` in ``cwd``; pipe readers run in ``tg`` (a generator must not own a task group)."""
    begin = time.monotonic()
    try:
        process = await anyio.open_process(
            request.argv,
            cwd=cwd,
            env=env,
            stdin=DEVNULL,
            stdout=PIPE,
            stderr=PIPE,
            start_new_session=True,
        )
    except OSError as exc:  # like a shell: 127 when not found, 126 when not executable
        yield ExecOutput("stderr", f"codehub: {exc.strerror}: {exc.filename}\n")
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        yield ExecExit(exit_code=code, duration_ms=int((time.monotonic() - begin) * 1000))
        return
    send, receive = anyio.create_memory_object_stream[tuple[OutputStream, bytes]](64)
    async with send:
        tg.start_soon(_pump, process.stdout, "stdout", send.clone())
        tg.start_soon(_pump, process.stderr, "stderr", send.clone())
    cap = OutputCap(request.max_output_bytes)
    deadline = begin + request.timeout_s
    timed_out = False
    try:
        async with receive:
            while True:
                item, got = None, False
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        item = None
                    got = True
                if not got:
                    if timed_out:
                        break
                    timed_out = True
                    ls.signal_group(process.pid, signal.SIGKILL)
                    deadline = time.monotonic() + KILL_GRACE
                    continue
                if item is None:
                    break
                text = cap.feed(item[0], item[1])
                if text:
                    yield ExecOutput(item[0], text)
        for channel in OUTPUT_STREAMS:
            rest = cap.flush(channel)
            if rest:
                yield ExecOutput(channel, rest)
        with anyio.move_on_after(KILL_GRACE):
            await process.wait()
        status = ls.exit_status(process.returncode)
        yield ExecExit(
            exit_code=TIMEOUT_EXIT if timed_out else (status if status is not None else -1),
            duration_ms=int((time.monotonic() - begin) * 1000),
            truncated=cap.truncated,
            timed_out=timed_out,
        )
    finally:
        if process.returncode is None:
            ls.signal_group(process.pid, signal.SIGKILL)


async def _pump(
    stream: ByteReceiveStream | None, name: OutputStream, send: MemoryObjectSendStream[tuple[OutputStream, bytes]]
) -> None:
    async with send:
        if stream is None:
            return
        try:
            async for chunk in stream:
                try:
                    await send.send((name, chunk))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    continue
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
