"""The runtime contract: what the lifecycle needs of an engine that runs workspaces.

Modeled on JupyterHub's Spawner (start / stop / inspect), widened with status, logs, exec and a TTY hook.
The protocol holds what the hub calls; runtimes may offer more (``poll``, ``exec``) for tests and tools.
One runtime object serves one engine (a Docker host, or this machine's processes) and is keyed by
workspace id, so it holds no per-workspace state the database does not also know: a hub restarted
after a crash can poll, stop and remove what it started before.

Runtimes are async context managers; open them once in the app lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, Self, runtime_checkable

import msgspec

from app.errors import BadGateway, Conflict, NotFound, ServiceUnavailable
from app.services.files.storage import WorkspaceStorage
from app.services.runtime.ide_secret import IdeSecret

IDE_PORT = 8080
LABEL_WORKSPACE = "codehub.workspace"
LABEL_OWNER = "codehub.owner"
LABEL_HUB = "codehub.hub"


StorageKind = Literal["directory", "volume"]


class StorageRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a workspace's files live, as the runtime that holds them names them.

    ``directory``: a directory on the runtime's machine (the local-process runtime). ``volume``: a named
    volume on the workspace's engine, never a path on the hub's disk.
    """

    kind: StorageKind
    name: str

    @classmethod
    def directory(cls, path: str) -> StorageRef:
        """A directory on the runtime's machine."""
        return cls(kind="directory", name=path)


class WorkspaceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a runtime needs to start one workspace."""

    id: str
    owner: str
    image: str
    hub_id: str
    storage: StorageRef
    mount: str = "/home/coder/project"
    """Where a ``directory`` storage is mounted (a ``volume`` is mounted at ``home``, the project below it)."""
    home: str = "/home/coder"
    cpu: float = 1.0
    memory_mb: int = 2048
    pids_limit: int = 1024
    env: dict[str, str] = msgspec.field(default_factory=dict)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    command: tuple[str, ...] = ()
    ide_port: int = IDE_PORT
    ide_secret: IdeSecret | None = None
    """The start's credential: the IDE must refuse requests without it (None: an IDE without auth, in tests)."""

    @property
    def container_name(self) -> str:
        """Name of the workspace's container (``codehub-<id>``)."""
        return container_name(self.id)


def container_name(workspace_id: str) -> str:
    """Container name for a workspace id."""
    return f"codehub-{workspace_id}"


class Endpoint(msgspec.Struct, frozen=True):
    """Where the IDE of a started workspace answers, and what runs it."""

    host: str
    port: int
    container_id: str

    @property
    def url(self) -> str:
        """Base HTTP URL of the IDE."""
        return f"http://{self.host}:{self.port}"


class ResourceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Resource numbers of a running workspace, sampled at ``sampled_at``."""

    cpu_percent: float
    memory_used_bytes: int
    memory_limit_bytes: int
    pids: int
    sampled_at: str


class RuntimeState(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine knows of one workspace (for polling and reconciliation)."""

    workspace_id: str
    container_id: str
    running: bool
    status: str
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    hub_id: str = ""
    owner: str = ""


class LogLine(msgspec.Struct, frozen=True):
    """One line of IDE output with its RFC 3339 timestamp."""

    at: str
    text: str


class ExecRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A command to run in a workspace: an argv list, or a string run with ``sh -c``."""

    command: list[str] | str
    timeout_s: float = 60.0
    workdir: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    max_output_bytes: int = 1_048_576

    @property
    def argv(self) -> list[str]:
        """The argv to run."""
        return ["sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)


class ExecResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of a finished command. ``exit_code`` is 137 after a timeout kill."""

    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    truncated: bool = False
    timed_out: bool = False


OutputStream = Literal["stdout", "stderr"]
OUTPUT_STREAMS: tuple[OutputStream, ...] = ("stdout", "stderr")


class ExecOutput(msgspec.Struct, frozen=True):
    """A chunk of live command output."""

    stream: OutputStream
    data: str


class ExecExit(msgspec.Struct, frozen=True, kw_only=True):
    """The last item of an exec stream."""

    exit_code: int
    duration_ms: int
    truncated: bool = False
    timed_out: bool = False


ExecItem = ExecOutput | ExecExit


class RuntimeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something the engine did to a workspace on its own (``die``, ``destroy``, ``start``, ``oom``)."""

    workspace_id: str
    event: str
    exit_code: int | None = None
    at: str = ""


class EngineInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Answer of an engine check."""

    ok: bool
    version: str = ""
    api_version: str = ""
    latency_ms: float = 0.0
    error: str | None = None


Progress = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Callback for start progress: ``(kind, data)``, e.g. ``("pull", {...})`` or ``("created", {...})``."""


class StartFailed(BadGateway):
    """The workspace did not come up; ``logs`` carries its last output lines."""

    default_code = "start_failed"

    def __init__(self, detail: str, *, logs: Sequence[str] = (), code: str | None = None) -> None:
        super().__init__(detail, code=code, logs=list(logs))
        self.logs = list(logs)


class ImageNotFound(StartFailed):
    """The workspace image is not on the engine (and pulling is off or failed)."""

    default_code = "image_not_found"


class RuntimeUnavailable(ServiceUnavailable):
    """The engine does not answer."""

    default_code = "runtime_unavailable"


class WorkspaceNotRunning(Conflict):
    """An operation that needs a running workspace found none."""

    default_code = "workspace_not_running"


class UnknownWorkspace(NotFound):
    """The engine has no container or process for this workspace."""

    default_code = "runtime_not_found"


@runtime_checkable
class Terminal(Protocol):
    """An interactive shell with a TTY (the web terminal)."""

    async def send(self, data: bytes) -> None:
        """Write keystrokes to the shell."""
        ...

    async def receive(self) -> bytes:
        """Next output bytes; ``b""`` once the shell has exited."""
        ...

    async def resize(self, cols: int, rows: int) -> None:
        """Change the window size."""
        ...

    async def close(self) -> None:
        """Hang up (the shell gets SIGHUP / its stream is closed)."""
        ...


@runtime_checkable
class ImageStore(Protocol):
    """What runtimes that run workspaces from images offer beside ``WorkspaceRuntime`` (Docker does; local
    processes have no images). Templates ask it before a create and pre-pull through it."""

    async def has_image(self, image: str) -> bool:
        """True when ``image`` is on the engine now (no pull)."""
        ...

    async def pull_image(self, image: str, progress: Progress | None = None) -> None:
        """Pull ``image`` (``ImageNotFound`` when that fails), reporting ``("pull", {...})`` progress."""
        ...


class WorkspaceRuntime(Protocol):
    """One engine that runs workspaces. Every method is keyed by workspace id."""

    kind: str
    """The registered kind, stored as ``Workspace.runtime`` for the workspaces it runs."""

    async def __aenter__(self) -> Self:
        """Open the engine's client (and whatever the runtime supervises)."""
        ...

    async def __aexit__(self, *exc: object) -> None:
        """Close it."""
        ...

    async def start(
        self, spec: WorkspaceSpec, *, ready_timeout: float = 60.0, progress: Progress | None = None
    ) -> Endpoint:
        """Start (replacing any leftover), wait until the IDE answers HTTP, return its endpoint.

        Raises ``ImageNotFound`` or ``StartFailed`` (with the last log lines); a failed start leaves
        nothing running.
        """
        ...

    async def stop(self, workspace_id: str, *, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code (None if nothing ran)."""
        ...

    async def inspect(self, workspace_id: str) -> RuntimeState | None:
        """What the engine knows of the workspace, or None."""
        ...

    async def list_states(self, hub_id: str) -> list[RuntimeState]:
        """Every workspace this hub deployment has on the engine (running or not)."""
        ...

    async def endpoint(self, workspace_id: str) -> Endpoint:
        """Endpoint of a running workspace (``WorkspaceNotRunning`` otherwise)."""
        ...

    async def status(self, workspace_id: str) -> ResourceStatus:
        """CPU, memory and pids of a running workspace (cached briefly when a cache is set)."""
        ...

    async def logs(self, workspace_id: str, *, tail: int = 200, since: float | None = None) -> list[LogLine]:
        """The last ``tail`` lines, optionally only those after ``since`` (a UNIX time)."""
        ...

    def follow_logs(
        self, workspace_id: str, *, tail: int = 0, since: float | None = None
    ) -> AsyncGenerator[LogLine, None]:
        """Lines as they are written, until the workspace stops or the consumer leaves."""
        ...

    def exec_stream(self, workspace_id: str, request: ExecRequest) -> AsyncIterator[ExecItem]:
        """Run a command, yielding ``ExecOutput`` chunks live and one ``ExecExit`` last."""
        ...

    async def open_terminal(
        self,
        workspace_id: str,
        *,
        cols: int = 80,
        rows: int = 24,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Terminal:
        """Start an interactive shell (default: bash if present, else sh) on a TTY."""
        ...

    def storage(self, workspace_id: str, *, image: str = "") -> WorkspaceStorage:
        """The workspace's files on this engine (created on first write or start, removed by a purge);
        ``image``: the workspace's image, for runtimes that work on files with a helper of it."""
        ...

    def storage_ref(self, workspace_id: str) -> StorageRef:
        """How ``WorkspaceSpec.storage`` names the workspace's files on this engine."""
        ...

    async def remove(self, workspace_id: str, *, purge: bool = False, container_id: str | None = None) -> None:
        """Remove the container/process (killing it); with ``purge`` also delete its storage.

        With ``container_id`` only that exact container (or process) goes: a superseded start cleans up
        after itself without touching a newer start's container.
        """
        ...

    def events(self, hub_id: str) -> AsyncIterator[RuntimeEvent]:
        """Lifecycle events the engine reports for this hub's workspaces, live."""
        ...

    async def info(self) -> EngineInfo:
        """Check the engine: version, API version, round-trip latency."""
        ...
