"""Commands and terminals inside workspace containers (``docker exec``).

Docker has no "kill this exec" call. Every command therefore starts under a tiny ``sh`` wrapper that
prints its own pid and then ``exec``s the command; exec'd processes are session and process-group
leaders, so a timeout kills the whole group from a second exec (``kill -KILL -<pid>``). Images need
``/bin/sh`` (every IDE image has one).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, suppress
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError

from app import metrics
from app.services.runtime.base import (
    ExecItem,
    ExecRequest,
    WorkspaceNotRunning,
)
from app.services.runtime.exec_output import DEFAULT_SHELL, HANGUP_GROUP, KILL_GROUP, Chunk, pump_output

PID_WRAPPER = 'echo "$$"; exec "$@"'


async def _running(docker: aiodocker.Docker, name: str) -> tuple[Any, dict[str, Any]]:
    container = docker.containers.container(name)
    try:
        with metrics.docker_call("inspect"):
            info = await container.show()
    except DockerError as exc:
        if exc.status == 404:
            raise WorkspaceNotRunning(f"container {name} does not exist") from exc
        raise
    if not info["State"].get("Running"):
        raise WorkspaceNotRunning(f"container {name} is not running")
    return container, info


async def _signal_group(container: Any, pid: int, script: str) -> None:
    try:
        with metrics.docker_call("exec"):
            kill = await container.exec(["sh", "-c", script, "sh", str(pid)], stdout=False, stderr=False)
            await kill.start(detach=True)
    except DockerError:
        pass


async def _exit_code(exec_: Any, wait: float = 2.0) -> int | None:
    deadline = time.monotonic() + wait
    while True:
        with metrics.docker_call("exec_inspect"):
            info = await exec_.inspect()
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() >= deadline:
            return None
        await anyio.sleep(0.02)


async def exec_stream(docker: aiodocker.Docker, name: str, request: ExecRequest) -> AsyncIterator[ExecItem]:
    """Run ``request`` in container ``name``: ``ExecOutput`` chunks, then one ``ExecExit``.

    Output past ``max_output_bytes`` is read and dropped (``truncated``). At the timeout the process
    group is killed (exit 137, ``timed_out``). A consumer that leaves early kills the command too.
    """
    container, info = await _running(docker, name)
    workdir = request.workdir or None
    if workdir and not workdir.startswith("/"):
        workdir = posixpath.join((info.get("Config") or {}).get("WorkingDir") or "/", workdir)
    with metrics.docker_call("exec"):
        exec_ = await container.exec(
            ["sh", "-c", PID_WRAPPER, "sh", *request.argv],
            stdout=True,
            stderr=True,
            environment=request.env or None,
            workdir=workdir,
        )
    stream = exec_.start(detach=False)

    async def receive() -> Chunk | None:
        message = await stream.read_out()
        if message is None:
            return None
        return ("stdout" if message.stream == 1 else "stderr"), message.data

    async def kill_group(pid: int) -> None:
        await _signal_group(container, pid, KILL_GROUP)

    async with stream, aclosing(pump_output(request, receive, kill_group, lambda: _exit_code(exec_))) as items:
        async for item in items:
            yield item


class DockerTerminal:
    """A shell on a TTY inside a container (``docker exec -it``)."""

    def __init__(self, container: Any, exec_: Any, stream: Any) -> None:
        self._container = container
        self._exec = exec_
        self._stream = stream
        self._pid: int | None = None
        self._head = bytearray()
        self.closed = False

    async def _read_pid(self) -> bytes:
        while self._pid is None:
            message = await self._stream.read_out()
            if message is None:
                self._pid = 0
                return bytes(self._head)
            self._head += message.data
            if b"\n" in self._head:
                first, _, rest = bytes(self._head).partition(b"\n")
                digits = first.strip()
                self._pid = int(digits) if digits.isdigit() else 0
                return rest
        return b""

    async def send(self, data: bytes) -> None:
        """Write keystrokes."""
        await self._stream.write_in(data)

    async def receive(self) -> bytes:
        """Next output bytes; ``b""`` once the shell has exited."""
        if self._pid is None:
            rest = await self._read_pid()
            if rest:
                return rest
        message = await self._stream.read_out()
        return b"" if message is None else message.data

    async def resize(self, cols: int, rows: int) -> None:
        """Change the TTY size."""
        await self._exec.resize(h=rows, w=cols)

    async def exit_code(self) -> int | None:
        """The shell's exit code once it has exited."""
        info = await self._exec.inspect()
        return None if info.get("Running") else info.get("ExitCode")

    async def close(self) -> None:
        """Hang up the shell and its jobs, and close the stream."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            if self._pid:
                await _signal_group(self._container, self._pid, HANGUP_GROUP)
            await self._stream.close()


async def open_terminal(
    docker: aiodocker.Docker,
    name: str,
    *,
    cols: int,
    rows: int,
    command: Sequence[str] | None,
    env: dict[str, str] | None,
) -> DockerTerminal:
    """Start a shell on a TTY in container ``name``."""
    container, _ = await _running(docker, name)
    environment = {"TERM": "xterm-256color", **(env or {})}
    argv = list(command or DEFAULT_SHELL)
    with metrics.docker_call("exec"):
        exec_ = await container.exec(
            ["sh", "-c", PID_WRAPPER, "sh", *argv],
            stdout=True,
            stderr=True,
            stdin=True,
            tty=True,
            environment=environment,
        )
    stream = exec_.start(detach=False)
    await stream.__aenter__()
    terminal = DockerTerminal(container, exec_, stream)
    with suppress(DockerError):
        await exec_.resize(h=rows, w=cols)
    return terminal
