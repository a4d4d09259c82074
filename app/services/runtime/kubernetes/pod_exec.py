"""Commands and terminals in pods through ``pods/exec`` over the WebSocket channel protocol.

``v4.channel.k8s.io``: every binary message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the
final ``Status`` with the exit code, 4 resize as ``{"Width", "Height"}``). v4 cannot close stdin, so
commands that read input read an announced number of bytes (``head -c N``). ``pods/exec`` has no
environment, working directory or kill: a small ``sh`` wrapper prints its pid, exports the environment,
changes directory and ``exec``s the command; a timeout kills its process group from a second exec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc
import httpx_ws

from app.services.runtime.base import (
    ExecItem,
    ExecRequest,
)
from app.services.runtime.exec_output import DEFAULT_SHELL, HANGUP_GROUP, KILL_GROUP, Chunk, pump_output
from app.services.runtime.kubernetes.connection import KubeConnection
from app.services.runtime.kubernetes.manifests import IDE_CONTAINER

log = logging.getLogger(__name__)
PROTOCOLS = ("v4.channel.k8s.io",)
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
WRAPPER = (
    'echo "$$"; dir=$1; n=$2; shift 2; while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n-1)); done; '
    'cd -- "$dir" || exit 126; exec "$@"'
)
PID_LINE = re.compile(rb"(?m)^(\d+)\r?\n")
PID_LINES = 8
SIZED = 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"'
"""Sets the TTY's size before the shell runs: the resize channel reaches the TTY asynchronously, after the
shell may have read its size."""
CHUNK = 256 << 10


def wrapped(argv: Sequence[str], workdir: str, env: dict[str, str]) -> list[str]:
    """``argv`` under the wrapper: pid first, then the environment and the working directory."""
    return ["sh", "-c", WRAPPER, "sh", workdir, str(len(env)), *(f"{k}={v}" for k, v in env.items()), *argv]


def exec_params(argv: Sequence[str], *, stdin: bool, tty: bool, container: str) -> list[tuple[str, str]]:
    """The query of a ``pods/exec`` call."""
    flags = {"stdout": True, "stderr": not tty, "stdin": stdin, "tty": tty}
    params = [("container", container), *((key, "true" if on else "false") for key, on in flags.items())]
    return params + [("command", arg) for arg in argv]


def exit_code_of(status: dict[str, Any]) -> int:
    """The exit code in the error channel's ``Status`` (0 for Success)."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", 1))
    return -1


def _exec_path(conn: KubeConnection, pod: str) -> str:
    return conn.path("pods", pod) + "/exec"


async def _send_stdin(ws: Any, data: bytes | AsyncIterable[bytes]) -> None:
    if not isinstance(data, bytes):
        async for chunk in data:
            await ws.send_bytes(bytes([STDIN]) + chunk)
        return
    for offset in range(0, len(data), CHUNK):
        await ws.send_bytes(bytes([STDIN]) + data[offset : offset + CHUNK])


async def run(
    conn: KubeConnection,
    pod: str,
    argv: Sequence[str],
    *,
    stdin: bytes | AsyncIterable[bytes] | None = None,
    container: str = IDE_CONTAINER,
    limit: int = 64 << 20,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to its end: (exit code, stdout, stderr); ``stdin``, bytes or chunks sent as the socket takes
    them, is sent whole (read it with ``head -c``)."""
    out, err = bytearray(), bytearray()
    code = -1
    params = exec_params(argv, stdin=stdin is not None, tty=False, container=container)
    async with (
        conn.websocket(_exec_path(conn, pod), params, protocols=PROTOCOLS) as ws,
        anyio.create_task_group() as tg,
    ):
        if stdin:
            tg.start_soon(_send_stdin, ws, stdin)
        try:
            while True:
                message = await ws.receive_bytes()
                channel, data = message[0], message[1:]
                if not data:
                    continue  # each channel opens with an empty message
                if channel == ERROR:
                    status = json.loads(data)
                    code = exit_code_of(status)
                    if code == -1:  # the exec itself failed (no exit code): say why
                        err += str(status.get("message", "")).encode()
                    break
                target = out if channel == STDOUT else err
                if len(target) < limit:
                    target += data
        except httpx_ws.WebSocketDisconnect:
            pass
        tg.cancel_scope.cancel()
    return code, bytes(out), bytes(err)


async def _kill(conn: KubeConnection, pod: str, pid: int, script: str) -> None:
    try:
        with anyio.fail_after(10):
            await run(conn, pod, ["sh", "-c", script, "sh", str(pid)])
    except Exception as exc:  # the pod may be gone already: nothing left to kill
        log.debug("signal to %s in %s not sent: %s", pid, pod, exc)


class ChannelSession:
    """A ``pods/exec`` WebSocket served by a task of the runtime's task group, used through memory streams.

    httpx-ws keeps a task group open for as long as a WebSocket is: a terminal or a streamed command held
    across the caller's calls would leave that group inside the caller's cancel scopes, so the socket lives
    in a task of its own and the caller only sends and receives messages.
    """

    def __init__(self) -> None:
        self._out_send, self._out = anyio.create_memory_object_stream[tuple[int, bytes]](64)
        self._in, self._in_receive = anyio.create_memory_object_stream[bytes](64)
        self._scope = anyio.CancelScope()
        self.done = False

    async def serve(self, conn: KubeConnection, pod: str, params: list[tuple[str, str]], *, task_status: Any) -> None:
        """Open the socket, report it open, then pump both ways until it closes or ``close`` is called."""
        try:
            await self._serve(conn, pod, params, task_status=task_status)
        finally:
            self.done = True

    async def _serve(self, conn: KubeConnection, pod: str, params: list[tuple[str, str]], *, task_status: Any) -> None:
        with self._scope, self._out_send:
            async with conn.websocket(_exec_path(conn, pod), params, protocols=PROTOCOLS) as ws:
                task_status.started()
                async with anyio.create_task_group() as tg:

                    async def pump_in() -> None:
                        async for data in self._in_receive:
                            await ws.send_bytes(data)

                    tg.start_soon(pump_in)
                    try:
                        while True:
                            message = await ws.receive_bytes()
                            await self._out_send.send((message[0], bytes(message[1:])))
                            if message[0] == ERROR and len(message) > 1:
                                break
                    except (httpx_ws.WebSocketDisconnect, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                    except Exception as exc:  # the runtime's task group must not fall with one socket
                        log.warning("exec socket to %s broke: %s", pod, exc)
                    tg.cancel_scope.cancel()

    async def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, data); None once the socket has closed."""
        try:
            return await self._out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None

    async def send(self, channel: int, data: bytes) -> None:
        """Send ``data`` on ``channel`` (stdin or resize)."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._in.send(bytes([channel]) + data)

    def close(self) -> None:
        """End the socket's task."""
        self.done = True
        self._scope.cancel()
        self._in.close()
        self._out.close()


async def open_session(
    tg: anyio.abc.TaskGroup, conn: KubeConnection, pod: str, params: list[tuple[str, str]]
) -> ChannelSession:
    """A ``ChannelSession`` whose socket is open (errors of the upgrade are raised here)."""
    session = ChannelSession()
    await tg.start(session.serve, conn, pod, params)
    return session


async def exec_stream(
    tg: anyio.abc.TaskGroup, conn: KubeConnection, pod: str, request: ExecRequest, *, project: str
) -> AsyncIterator[ExecItem]:
    """Run ``request`` in ``pod``: ``ExecOutput`` chunks, then one ``ExecExit`` (as the Docker runtime's)."""
    workdir = request.workdir or project
    if not workdir.startswith("/"):
        workdir = f"{project.rstrip('/')}/{workdir}"
    argv = wrapped(request.argv, workdir, request.env)
    code: int | None = None
    session = await open_session(tg, conn, pod, exec_params(argv, stdin=False, tty=False, container=IDE_CONTAINER))

    async def receive() -> Chunk | None:
        nonlocal code
        while (message := await session.receive()) is not None:
            channel, data = message
            if not data:
                continue  # each channel opens with an empty message
            if channel == ERROR:
                code = exit_code_of(json.loads(data))
                return None
            return ("stdout" if channel == STDOUT else "stderr"), data
        return None

    async def kill_group(pid: int) -> None:
        await _kill(conn, pod, pid, KILL_GROUP)

    async def exit_code() -> int | None:
        return code

    try:
        async with contextlib.aclosing(pump_output(request, receive, kill_group, exit_code)) as items:
            async for item in items:
                yield item
    finally:
        session.close()


class KubeTerminal:
    """A shell on a TTY in the workspace pod (``pods/exec`` with ``tty=true``)."""

    def __init__(self, conn: KubeConnection, pod: str, session: ChannelSession) -> None:
        self._conn, self._pod, self._session = conn, pod, session
        self._pid: int | None = None
        self._head = bytearray()
        self._code: int | None = None
        self.closed = False

    async def _next(self) -> bytes | None:
        """The next output bytes; None at the end (the exit code kept)."""
        while True:
            message = await self._session.receive()
            if message is None:
                return None
            channel, data = message
            if not data:
                continue  # each channel opens with an empty message
            if channel == ERROR:
                self._code = exit_code_of(json.loads(data))
                return None
            return data

    async def send(self, data: bytes) -> None:
        """Write keystrokes."""
        await self._session.send(STDIN, data)

    async def receive(self) -> bytes:
        """Next output bytes; ``b""`` once the shell has exited."""
        while self._pid is None:
            data = await self._next()
            if data is None:
                self._pid = 0
                return bytes(self._head)
            self._head += data
            found = PID_LINE.search(self._head)
            if found is not None or self._head.count(b"\n") > PID_LINES:
                # keys typed before the shell ran are echoed by the TTY ahead of the wrapper's pid line
                self._pid = int(found.group(1)) if found else 0
                rest = bytes(self._head[: found.start()] + self._head[found.end() :]) if found else bytes(self._head)
                if rest:
                    return rest
        return await self._next() or b""

    async def resize(self, cols: int, rows: int) -> None:
        """Change the TTY size (the resize channel)."""
        await self._session.send(RESIZE, json.dumps({"Width": cols, "Height": rows}).encode())

    async def exit_code(self) -> int | None:
        """The shell's exit code once it has exited."""
        return self._code

    async def close(self) -> None:
        """Hang up the shell and its jobs, and close the stream."""
        if self.closed:
            return
        self.closed = True
        self._session.close()
        if self._pid:
            with anyio.CancelScope(shield=True):
                await _kill(self._conn, self._pod, self._pid, HANGUP_GROUP)


async def open_terminal(
    tg: anyio.abc.TaskGroup,
    conn: KubeConnection,
    pod: str,
    *,
    cols: int,
    rows: int,
    command: Sequence[str] | None,
    env: dict[str, str] | None,
    project: str,
) -> KubeTerminal:
    """Start a shell on a TTY in ``pod``."""
    shell = ["sh", "-c", SIZED, "sh", str(rows), str(cols), *(command or DEFAULT_SHELL)]
    argv = wrapped(shell, project, {"TERM": "xterm-256color", **(env or {})})
    session = await open_session(tg, conn, pod, exec_params(argv, stdin=True, tty=True, container=IDE_CONTAINER))
    terminal = KubeTerminal(conn, pod, session)
    await terminal.resize(cols, rows)
    return terminal
