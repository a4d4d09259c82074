"""Local-process runtime (JupyterHub's LocalProcessSpawner): the default when no Docker engine is set.

Each workspace runs ``local_ide_command`` (``{port}`` and ``{dir}`` filled in) in its directory, on a
free loopback port, as leader of its own session so stop and timeouts reach every child. Output is
timestamped into a ring buffer and ``<state dir>/<id>.log``; ``<id>.json`` records pid and port so a
restarted hub can find (and stop) what it started. No isolation and no enforced limits: the IDE runs
as the hub's user. The hub's ``CODEHUB_*`` variables are not passed on; the start's IDE secret is, in the
IDE's environment only (``HASHED_PASSWORD`` and ``CODEHUB_IDE_SECRET``; never in argv, which ``ps`` shows).
"""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from app.models import RuntimeKind
from app.services.files.storage import LocalStorage, WorkspaceStorage
from app.services.runtime import local_exec
from app.services.runtime import local_support as ls
from app.services.runtime.base import (
    Endpoint,
    EngineInfo,
    ExecItem,
    ExecRequest,
    ExecResult,
    LogLine,
    Progress,
    ResourceStatus,
    RuntimeEvent,
    RuntimeState,
    StartFailed,
    StorageRef,
    Terminal,
    UnknownWorkspace,
    WorkspaceNotRunning,
    WorkspaceSpec,
)
from app.services.runtime.cache import DEFAULT_TTL, StatusCache, cached_status
from app.services.runtime.common import (
    ProcessExited,
    collect_exec,
    free_port,
    iso_from_unix,
    wait_until_ready,
)
from app.services.runtime.common import (
    purge_dir as delete_tree,
)
from app.services.runtime.exec_output import DEFAULT_SHELL
from app.services.runtime.ide_secret import local_launch
from app.services.runtime.local_logs import follow_log_file, read_log_file
from app.services.runtime.local_process import LocalProcess
from app.services.runtime.registry import RuntimeOptions, register_runtime


class LocalRuntime:
    """Workspaces as local processes. Enter it (``async with``) once; leaving stops every IDE."""

    kind: str = RuntimeKind.LOCAL

    def __init__(
        self,
        state_dir: Path,
        command: str,
        *,
        host: str = "127.0.0.1",
        log_lines: int = 5000,
        status_cache: StatusCache | None = None,
        status_ttl: float = DEFAULT_TTL,
        workspaces_dir: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.workspaces_dir = Path(workspaces_dir) if workspaces_dir is not None else self.state_dir / "workspaces"
        self.command = command
        self.host = host
        self._ring = log_lines
        self._cache = status_cache
        self._status_ttl = status_ttl
        self._procs: dict[str, LocalProcess] = {}
        self._subscribers: dict[MemoryObjectSendStream[RuntimeEvent], str] = {}
        self._tg: TaskGroup | None = None
        self._exit_stack: Any = None

    async def __aenter__(self) -> LocalRuntime:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._exit_stack = anyio.create_task_group()
        self._tg = await self._exit_stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            for workspace_id in list(self._procs):
                await self.stop(workspace_id, grace=5)
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._exit_stack.__aexit__(None, None, None)
        self._tg = None

    def storage_ref(self, workspace_id: str) -> StorageRef:
        """The workspace's directory under ``workspaces_dir``."""
        return StorageRef.directory(str(self.workspaces_dir / workspace_id))

    def storage(self, workspace_id: str, *, image: str = "") -> WorkspaceStorage:
        """The workspace's directory, on this machine."""
        return LocalStorage(Path(self.storage_ref(workspace_id).name))

    def _paths(self, workspace_id: str) -> tuple[Path, Path]:
        return self.state_dir / f"{workspace_id}.json", self.state_dir / f"{workspace_id}.log"

    def _argv(self, port: int, directory: str) -> list[str]:
        return shlex.split(self.command.format(port=port, dir=shlex.quote(directory)))

    async def start(
        self, spec: WorkspaceSpec, *, ready_timeout: float = 60.0, progress: Progress | None = None
    ) -> Endpoint:
        """Run the IDE command in the workspace directory and wait until it answers HTTP."""
        assert self._tg is not None, "LocalRuntime used outside `async with`"
        await self.remove(spec.id)
        directory = Path(spec.storage.name)
        await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        port = free_port(self.host)
        pid_path, log_path = self._paths(spec.id)
        argv, secret_env = local_launch(self._argv(port, str(directory)), spec.ide_secret)
        env = ls.child_env({**spec.env, "CODEHUB_WORKSPACE_ID": spec.id, "PORT": str(port), **secret_env})
        try:
            process = await anyio.open_process(
                argv,
                cwd=directory,
                env=env,
                stdin=DEVNULL,
                stdout=PIPE,
                stderr=STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise StartFailed(f"cannot run the IDE command: {exc}") from exc
        proc = LocalProcess(spec, process, port, log_path, self._ring)
        self._procs[spec.id] = proc
        ls.write_pidfile(
            pid_path,
            ls.PidFile(
                workspace_id=spec.id,
                pid=process.pid,
                start_ticks=ls.start_ticks(process.pid) or 0,
                port=port,
                hub_id=spec.hub_id,
                owner=spec.owner,
                workspace_dir=str(directory),  # where a purge finds it after a hub restart
                started_at=proc.started_at,
            ),
        )
        self._tg.start_soon(self._read_output, proc)
        endpoint = Endpoint(self.host, port, str(process.pid))
        if progress:
            await progress("process_started", {"pid": process.pid, "port": port})
        try:
            await wait_until_ready(endpoint.url, within=ready_timeout, alive=self._alive_check(proc))
        except ProcessExited:
            await proc.exited.wait()
            code = ls.exit_status(process.returncode)
            raise StartFailed(
                f"the IDE exited with code {code} before answering HTTP",
                logs=proc.last_lines(),
            ) from None
        except TimeoutError:
            lines = proc.last_lines()
            await self.stop(spec.id, grace=2)
            raise StartFailed(f"the IDE did not answer HTTP within {ready_timeout:g}s", logs=lines) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop(spec.id, grace=2)
            raise
        return endpoint

    def _alive_check(self, proc: LocalProcess) -> Any:
        async def alive() -> bool:
            return not proc.exited.is_set()

        return alive

    async def _read_output(self, proc: LocalProcess) -> None:
        await proc.pump_output()
        if self._cache is not None:
            await self._cache.drop(proc.spec.id)
        event = RuntimeEvent(
            workspace_id=proc.spec.id, event="die", exit_code=proc.exit_code, at=iso_from_unix(time.time())
        )
        await self._publish(event, proc.spec.hub_id)

    async def _publish(self, event: RuntimeEvent, hub_id: str) -> None:
        for send, wanted in list(self._subscribers.items()):
            if wanted != hub_id:
                continue
            try:
                send.send_nowait(event)
            except anyio.WouldBlock:
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.pop(send, None)

    async def stop(self, workspace_id: str, *, grace: float = 10.0) -> int | None:
        """SIGTERM the IDE's session, SIGKILL after ``grace``; returns the exit status."""
        if self._cache is not None:
            await self._cache.drop(workspace_id)
        proc = self._procs.get(workspace_id)
        if proc is None:
            record = ls.read_pidfile(self._paths(workspace_id)[0])
            if record is None or not ls.alive(record):
                return None
            await ls.terminate_group(record.pid, grace)
            return 128 + signal.SIGTERM
        if not proc.exited.is_set():
            await ls.terminate_group(proc.process.pid, grace)
            with anyio.move_on_after(grace + 2):
                await proc.exited.wait()
        return ls.exit_status(proc.process.returncode)

    async def poll(self, workspace_id: str) -> int | None:
        """None while running, else the exit status."""
        state = await self.inspect(workspace_id)
        if state is None:
            raise UnknownWorkspace(f"no process for workspace {workspace_id}")
        return None if state.running else (state.exit_code or 0)

    async def inspect(self, workspace_id: str) -> RuntimeState | None:
        """State of this workspace's process, from memory or (after a restart) its pid file."""
        proc = self._procs.get(workspace_id)
        if proc is not None:
            return proc.state()
        record = ls.read_pidfile(self._paths(workspace_id)[0])
        if record is None:
            return None
        running = ls.alive(record)
        return RuntimeState(
            workspace_id=workspace_id,
            container_id=str(record.pid),
            running=running,
            status="running" if running else "exited",
            exit_code=None if running else 0,
            started_at=iso_from_unix(record.started_at),
            hub_id=record.hub_id,
            owner=record.owner,
        )

    async def list_states(self, hub_id: str) -> list[RuntimeState]:
        """Every workspace with a pid file for this hub id."""
        states = []
        for path in sorted(self.state_dir.glob("*.json")):
            state = await self.inspect(path.stem)
            if state is not None and state.hub_id == hub_id:
                states.append(state)
        return states

    async def endpoint(self, workspace_id: str) -> Endpoint:
        """Endpoint of the running IDE."""
        state = await self.inspect(workspace_id)
        record = ls.read_pidfile(self._paths(workspace_id)[0])
        if state is None or not state.running or record is None:
            raise WorkspaceNotRunning(f"workspace {workspace_id} is not running")
        return Endpoint(self.host, record.port, str(record.pid))

    def _running(self, workspace_id: str) -> LocalProcess:
        proc = self._procs.get(workspace_id)
        if proc is None or proc.exited.is_set():
            raise WorkspaceNotRunning(f"workspace {workspace_id} is not running")
        return proc

    async def status(self, workspace_id: str) -> ResourceStatus:
        """CPU % (since the last sample), resident memory and process count of the IDE's session."""
        proc = self._running(workspace_id)

        return await cached_status(self._cache, workspace_id, self._status_ttl, proc.sample_status)

    async def logs(self, workspace_id: str, *, tail: int = 200, since: float | None = None) -> list[LogLine]:
        """The last ``tail`` lines (after ``since``), from memory or the log file."""
        proc = self._procs.get(workspace_id)
        if proc is not None:
            lines = list(proc.lines)
        else:
            log_path = self._paths(workspace_id)[1]
            if not log_path.exists():
                raise UnknownWorkspace(f"no process for workspace {workspace_id}")
            lines = await anyio.to_thread.run_sync(read_log_file, log_path)
        if since is not None:
            stamp = iso_from_unix(since)
            lines = [line for line in lines if line.at > stamp]
        return lines[-tail:] if tail else []

    async def follow_logs(
        self, workspace_id: str, *, tail: int = 0, since: float | None = None
    ) -> AsyncGenerator[LogLine, None]:
        """Lines as the IDE writes them, until it exits.

        An IDE this process did not start (another hub process, or this one before a restart) is
        followed through its log file.
        """
        proc = self._procs.get(workspace_id)
        if proc is None:
            async for line in follow_log_file(workspace_id, *self._paths(workspace_id), tail=tail, since=since):
                yield line
            return
        for line in await self.logs(workspace_id, tail=tail, since=since) if tail else []:
            yield line
        async for line in proc.follow():
            yield line

    async def exec(self, workspace_id: str, request: ExecRequest) -> ExecResult:
        """Run a command to completion in the workspace directory."""
        return await collect_exec(self.exec_stream(workspace_id, request))

    async def exec_stream(self, workspace_id: str, request: ExecRequest) -> AsyncIterator[ExecItem]:
        """Run a command in its own session in the workspace directory, streaming its output."""
        proc = self._running(workspace_id)
        assert self._tg is not None
        base = Path(proc.spec.storage.name)
        workdir = base / request.workdir if request.workdir else base
        async for item in local_exec.exec_stream(
            self._tg, request, cwd=workdir, env=ls.child_env({**proc.spec.env, **request.env})
        ):
            yield item

    async def open_terminal(
        self,
        workspace_id: str,
        *,
        cols: int = 80,
        rows: int = 24,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Terminal:
        """A shell on a pty in the workspace directory."""
        proc = self._running(workspace_id)
        return await ls.PtyTerminal.spawn(
            list(command or DEFAULT_SHELL),
            cwd=proc.spec.storage.name,
            env=ls.child_env({"TERM": "xterm-256color", **(env or {})}),
            cols=cols,
            rows=rows,
        )

    async def remove(self, workspace_id: str, *, purge: bool = False, container_id: str | None = None) -> None:
        """Stop the process (SIGKILL after 5 s) and forget it; with ``purge`` delete its directory (the one it
        last ran in, else its directory under ``workspaces_dir``).

        With ``container_id`` (a pid) nothing happens unless that is still the workspace's process.
        """
        if container_id is not None:
            state = await self.inspect(workspace_id)
            if state is None or state.container_id != container_id:
                return
        await self.stop(workspace_id, grace=5)
        proc = self._procs.pop(workspace_id, None)
        pid_path, log_path = self._paths(workspace_id)
        directory = proc.spec.storage.name if proc is not None else None
        if directory is None and purge:
            record = await anyio.to_thread.run_sync(ls.read_pidfile, pid_path)
            directory = record.workspace_dir if record is not None else None
        pid_path.unlink(missing_ok=True)
        if purge:
            log_path.unlink(missing_ok=True)
            await anyio.to_thread.run_sync(delete_tree, Path(directory or self.storage_ref(workspace_id).name))

    async def events(self, hub_id: str) -> AsyncIterator[RuntimeEvent]:
        """``die`` events of this hub's local processes, live."""
        send, receive = anyio.create_memory_object_stream[RuntimeEvent](256)
        self._subscribers[send] = hub_id
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            self._subscribers.pop(send, None)
            send.close()

    async def info(self) -> EngineInfo:
        """The local engine always answers."""
        return EngineInfo(ok=True, version="local", api_version="", latency_ms=0.0)


def local_for_hub(options: RuntimeOptions) -> LocalRuntime:
    """The hub's one local-process runtime; its state lives in ``<data_dir>/run``."""
    settings = options.settings
    return LocalRuntime(
        settings.data_dir.resolve() / "run",
        settings.local_ide_command,
        status_cache=options.cache,
        status_ttl=settings.status_cache_ttl,
        workspaces_dir=settings.resolved_workspaces_dir,
    )


register_runtime(RuntimeKind.LOCAL, local_for_hub)
