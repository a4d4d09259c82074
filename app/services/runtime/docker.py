"""Docker runtime: one workspace = one container ``codehub-<id>`` on a Docker engine, through aiodocker.

Hardening: no privileged mode, every capability dropped but ``IDE_CAPABILITIES``, ``no-new-privileges``,
CPU / memory (no extra swap) / pids limits, no restart policy (the hub owns the lifecycle), rotated
json-file logs. Network isolation (``docker_network``): every container joins the hub's bridge with
inter-container traffic off, internal for ``CODEHUB_WORKSPACE_EGRESS=none``; the IDE port is published on
the loopback address of a local engine (or the server's address for a remote one, never on every address)
with a host port the engine picks. Beside this module: ``docker_create`` (the create call and images),
``docker_logs`` (logs, events, engine info), ``docker_storage`` (volumes and file helpers), ``docker_exec``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio
from aiodocker.exceptions import DockerError

from app import metrics
from app.models import RuntimeKind
from app.services.files.storage import WorkspaceStorage
from app.services.runtime import common, docker_create, docker_exec, docker_logs
from app.services.runtime import docker_network as dn
from app.services.runtime import docker_support as ds
from app.services.runtime.base import (
    LABEL_HUB,
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
    container_name,
)
from app.services.runtime.cache import DEFAULT_TTL, StatusCache, cached_status
from app.services.runtime.common import (
    ProcessExited,
    collect_exec,
    resolve_container_user,
    wait_until_ready,
)
from app.services.runtime.docker_storage import DockerStorage
from app.services.runtime.docker_volume import DockerVolumeFiles, helper_name
from app.services.runtime.registry import RuntimeOptions, register_runtime
from app.settings import WorkspaceEgress

IDE_CAPABILITIES = ds.IDE_CAPABILITIES


class DockerRuntime:
    """Workspaces as containers on one Docker engine (``unix://…`` or ``tcp://…``)."""

    kind: str = RuntimeKind.DOCKER

    def __init__(
        self,
        docker_url: str,
        *,
        public_host: str | None = None,
        container_user: str = "auto",
        pull: bool = False,
        status_cache: StatusCache | None = None,
        status_ttl: float = DEFAULT_TTL,
        egress: WorkspaceEgress = "open",
        workspaces_dir: Path | None = None,
        hub_id: str = "",
        home: str = "/home/coder",
        helper_image: str = "",
    ) -> None:
        self.docker_url = docker_url
        self.workspaces_dir = workspaces_dir or Path("workspaces").resolve()
        self.hub_id, self.home, self.helper_image = hub_id, home, helper_image
        self._user = resolve_container_user(container_user)
        self.storages = DockerStorage(
            lambda: self.docker,
            docker_url,
            hub_id=hub_id,
            home=home,
            helper_image=helper_image,
            user=self._user,
            workspaces_dir=self.workspaces_dir,
        )
        self._pull = pull
        self._cache = status_cache
        self._status_ttl = status_ttl
        self._docker: aiodocker.Docker | None = None
        self.endpoint_host, self._publish_host = ds.publish_address(docker_url, public_host)
        self._on_engine_host = ds.is_loopback(self.endpoint_host)
        self._networks = dn.WorkspaceNetworks(egress)
        self._unwrapped: set[str] = set()  # images the project wrapper failed in (docker_create)

    async def __aenter__(self) -> DockerRuntime:
        self._docker = aiodocker.Docker(url=self.docker_url, timeout=aiohttp.ClientTimeout(total=120, connect=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._docker is not None:
            with anyio.CancelScope(shield=True):
                await self.storages.channels.close_all()
                await self._docker.close()
            self._docker = None

    @property
    def docker(self) -> aiodocker.Docker:
        """The aiodocker client (the runtime must be entered)."""
        if self._docker is None:
            raise RuntimeError("DockerRuntime used outside `async with`")
        return self._docker

    def container_config(self, spec: WorkspaceSpec, *, network: str, publish_ip: str) -> dict[str, Any]:
        """The engine's create-container body for a workspace on ``network``, publishing on ``publish_ip``."""
        publish = None if self._networks.egress == "none" else publish_ip
        return ds.container_config(spec, network=network, publish_ip=publish, user=self._user)

    async def start(
        self, spec: WorkspaceSpec, *, ready_timeout: float = 60.0, progress: Progress | None = None
    ) -> Endpoint:
        """Create and start the container (replacing a leftover), then wait for the IDE's HTTP."""
        if self._networks.egress == "none" and not self._on_engine_host:
            raise StartFailed(
                "CODEHUB_WORKSPACE_EGRESS=none needs the Docker engine on the hub's machine: the hub dials the "
                f"IDE on the container's internal network, which {self.docker_url} does not route to it"
            )
        project = self._wrapper_project(spec)
        # overlapped, here and with the progress event below: one step at a time adds up every step's latency
        overrides, *_ = await common.concurrently(
            lambda: docker_create.launch_overrides(self.docker, self.docker_url, spec, project=project),
            lambda: self.storages.prepare(spec),
            lambda: self._drop_status(spec.id),
        )
        try:
            return await self._launch(spec, overrides, project, ready_timeout, progress)
        except docker_create.WrapperUnusable:
            self._unwrapped.add(spec.image)  # this image gets its project through the archive API from now on
            overrides = await docker_create.launch_overrides(self.docker, self.docker_url, spec, project=None)
            return await self._launch(spec, overrides, None, ready_timeout, progress)

    def _wrapper_project(self, spec: WorkspaceSpec) -> str | None:
        """The project directory the wrapper hands to the container's user (None: the archive API does)."""
        if spec.storage.kind != "volume" or self._user is None or spec.image in self._unwrapped:
            return None
        return ds.project_dir(spec.home)

    async def _launch(
        self,
        spec: WorkspaceSpec,
        overrides: dict[str, list[str]],
        project: str | None,
        ready_timeout: float,
        progress: Progress | None,
    ) -> Endpoint:
        with ds.engine_errors(self.docker_url):
            container, wrapped = await self._create(spec, progress, overrides, project)
            try:
                await self.storages.prepare_project(spec, container, owned=wrapped)
                with metrics.docker_call("start"):
                    await container.start()
                with metrics.docker_call("inspect"):
                    info = await container.show()
                if not info["State"].get("Running"):
                    raise ProcessExited
                endpoint = self._endpoint_of(info, spec.ide_port)

                async def alive() -> bool:
                    with metrics.docker_call("inspect"):
                        return bool((await container.show())["State"]["Running"])

                async def started() -> None:
                    if progress:
                        await progress("container_started", {"container_id": container.id})

                await common.concurrently(
                    lambda: wait_until_ready(endpoint.url, within=ready_timeout, alive=alive), started
                )
                return endpoint
            except ProcessExited:
                with metrics.docker_call("inspect"):
                    state = (await container.show())["State"]
                if wrapped and state.get("ExitCode") == docker_create.PROJECT_UNWRITABLE:
                    await self._delete_quietly(container.id)
                    raise docker_create.WrapperUnusable from None
                lines = await docker_logs.tail_text(container)
                raise StartFailed(
                    f"the IDE exited with code {state.get('ExitCode')} before answering HTTP", logs=lines
                ) from None
            except TimeoutError:
                lines = await docker_logs.tail_text(container)
                await self._kill_quietly(container)
                raise StartFailed(f"the IDE did not answer HTTP within {ready_timeout:g}s", logs=lines) from None
            except DockerError as exc:
                if wrapped and "executable file not found" in exc.message:  # an image without sh
                    await self._delete_quietly(container.id)
                    raise docker_create.WrapperUnusable from exc
                await self._kill_quietly(container)
                raise StartFailed(f"Docker could not start the container: {exc.message}") from exc
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._kill_quietly(container)
                raise

    async def _create(
        self, spec: WorkspaceSpec, progress: Progress | None, overrides: dict[str, list[str]], project: str | None
    ) -> tuple[Any, bool]:
        return await docker_create.create_container(
            self.docker,
            self.docker_url,
            spec,
            networks=self._networks,
            publish_host=self._publish_host,
            pull=self._pull,
            config=lambda spec, network, ip: self.container_config(spec, network=network, publish_ip=ip),
            remove=self._delete_quietly,
            progress=progress,
            overrides=overrides,
            project=project,
        )

    async def has_image(self, image: str) -> bool:
        """True when ``image`` is on this engine (an image inspect; nothing is pulled)."""
        return await docker_create.image_exists(self.docker, self.docker_url, image)

    async def pull_image(self, image: str, progress: Progress | None = None) -> None:
        """Pull ``image`` onto this engine whatever the pull setting says (an admin's pre-pull)."""
        with ds.engine_errors(self.docker_url):
            await ds.pull_image(self.docker, image, progress)

    def _endpoint_of(self, info: dict[str, Any], ide_port: int) -> Endpoint:
        return dn.ide_endpoint(info, ide_port, self.endpoint_host, self._on_engine_host)

    async def _kill_quietly(self, container: Any) -> None:
        with suppress(DockerError), metrics.docker_call("kill"):
            await container.kill()

    async def _delete_quietly(self, name: str) -> None:
        try:
            with metrics.docker_call("remove"):
                await self.docker.containers.container(name).delete(force=True, v=True)
        except DockerError as exc:
            if exc.status == 409:  # another removal of it is under way: wait for that one
                await self._gone(name)
            elif exc.status != 404:
                raise

    async def _gone(self, name: str, within: float = 30.0) -> None:
        with anyio.move_on_after(within):
            while True:
                try:
                    await self.docker.containers.container(name).show()
                except DockerError as exc:
                    if exc.status == 404:
                        return
                    raise
                await anyio.sleep(0.1)

    async def _drop_status(self, workspace_id: str) -> None:
        if self._cache is not None:
            await self._cache.drop(workspace_id)

    async def _show(self, workspace_id: str) -> dict[str, Any] | None:
        with ds.engine_errors(self.docker_url):
            try:
                with metrics.docker_call("inspect"):
                    return await self.docker.containers.container(container_name(workspace_id)).show()
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise

    async def stop(self, workspace_id: str, *, grace: float = 10.0) -> int | None:
        """``docker stop -t grace``; returns the exit code, None when there is no container."""
        await self._drop_status(workspace_id)
        container = self.docker.containers.container(container_name(workspace_id))
        with ds.engine_errors(self.docker_url):
            try:
                with metrics.docker_call("stop"):
                    await container.stop(t=math.ceil(grace))
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise
        info = await self._show(workspace_id)
        return None if info is None else info["State"].get("ExitCode")

    async def poll(self, workspace_id: str) -> int | None:
        """None while running, else the exit code."""
        info = await self._show(workspace_id)
        if info is None:
            raise UnknownWorkspace(f"no container for workspace {workspace_id}")
        state = info["State"]
        return None if state.get("Running") else int(state.get("ExitCode") or 0)

    async def inspect(self, workspace_id: str) -> RuntimeState | None:
        """The container's state, or None."""
        info = await self._show(workspace_id)
        return None if info is None else ds.state_of(info)

    async def list_states(self, hub_id: str) -> list[RuntimeState]:
        """Every container labelled with this hub id (from one list call, no inspects)."""
        filters = json.dumps({"label": [f"{LABEL_HUB}={hub_id}"]})
        with ds.engine_errors(self.docker_url), metrics.docker_call("list"):
            items = await self.docker.containers.list(all=True, filters=filters)
        states = [ds.state_of_list_item(item) for item in items]
        return [state for state in states if state.workspace_id]  # file helpers carry no workspace label

    async def endpoint(self, workspace_id: str) -> Endpoint:
        """Endpoint of the running container."""
        info = await self._show(workspace_id)
        if info is None or not info["State"].get("Running"):
            raise WorkspaceNotRunning(f"workspace {workspace_id} is not running")
        port = next(iter((info.get("Config") or {}).get("ExposedPorts") or {"8080/tcp": {}}))
        return self._endpoint_of(info, int(port.split("/")[0]))

    async def status(self, workspace_id: str) -> ResourceStatus:
        """CPU %, memory and pids from ``docker stats`` (one sample pair), cached briefly."""

        async def load() -> ResourceStatus:
            container = self.docker.containers.container(container_name(workspace_id))
            with ds.engine_errors(self.docker_url):
                try:
                    with metrics.docker_call("stats"):
                        samples = await container.stats(stream=False)
                except DockerError as exc:
                    raise WorkspaceNotRunning(f"workspace {workspace_id} is not running") from exc
            if not samples or not samples[0].get("pids_stats"):
                raise WorkspaceNotRunning(f"workspace {workspace_id} is not running")
            return ds.resource_status(samples[0])

        return await cached_status(self._cache, workspace_id, self._status_ttl, load)

    async def logs(self, workspace_id: str, *, tail: int = 200, since: float | None = None) -> list[LogLine]:
        """The last ``tail`` lines (after ``since``) with the engine's timestamps."""
        return await docker_logs.logs(self.docker, self.docker_url, workspace_id, tail=tail, since=since)

    def follow_logs(
        self, workspace_id: str, *, tail: int = 0, since: float | None = None
    ) -> AsyncGenerator[LogLine, None]:
        """Lines as the container writes them; ends when the container stops."""
        return docker_logs.follow_logs(self.docker, self.docker_url, workspace_id, tail=tail, since=since)

    async def exec(self, workspace_id: str, request: ExecRequest) -> ExecResult:
        """Run a command to completion in the container."""
        return await collect_exec(self.exec_stream(workspace_id, request))

    def exec_stream(self, workspace_id: str, request: ExecRequest) -> AsyncIterator[ExecItem]:
        """Run a command in the container, streaming its output."""
        return docker_exec.exec_stream(self.docker, container_name(workspace_id), request)

    async def open_terminal(
        self,
        workspace_id: str,
        *,
        cols: int = 80,
        rows: int = 24,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Terminal:
        """An interactive shell on a TTY in the container."""
        with ds.engine_errors(self.docker_url):
            return await docker_exec.open_terminal(
                self.docker, container_name(workspace_id), cols=cols, rows=rows, command=command, env=env
            )

    def storage_ref(self, workspace_id: str) -> StorageRef:
        """The workspace's home volume on this engine."""
        return self.storages.ref(workspace_id)

    def volume_files(self, workspace_id: str, *, image: str = "", hub_id: str = "") -> DockerVolumeFiles:
        """The file primitives of a workspace's volume (through its helper container of ``image``)."""
        return self.storages.files(workspace_id, image=image, hub_id=hub_id)

    def storage_lock(self, workspace_id: str) -> anyio.Lock:
        """The lock this hub's file operations on the workspace hold (a move holds it too)."""
        return self.storages.lock(workspace_id)

    def storage(self, workspace_id: str, *, image: str = "") -> WorkspaceStorage:
        """The workspace's volume, worked on by the hub through the volume's engine."""
        return self.storages.storage(workspace_id, image=image)

    async def remove(self, workspace_id: str, *, purge: bool = False, container_id: str | None = None) -> None:
        """Force-remove the container (only ``container_id`` when given); ``purge``: its volume (and any
        directory of its from before volumes) too."""
        await self._drop_status(workspace_id)
        bound = await self._bound_dirs(workspace_id) if purge else []
        with ds.engine_errors(self.docker_url):
            await self._delete_quietly(container_id or container_name(workspace_id))
            if container_id is None:  # the workspace goes: its file helper too (made again on demand)
                await self.storages.forget(workspace_id)
                await self._delete_quietly(helper_name(workspace_id))
        if purge:
            await self.storages.purge(workspace_id, bound)

    async def _bound_dirs(self, workspace_id: str) -> list[Path]:
        """Hub directories the workspace's container bind-mounts (a ``directory`` storage)."""
        info = await self._show(workspace_id)
        binds = ((info or {}).get("HostConfig") or {}).get("Binds") or []
        return [Path(bind.split(":", 1)[0]) for bind in binds]

    def events(self, hub_id: str) -> AsyncIterator[RuntimeEvent]:
        """Live container events (start, die, oom, destroy, stop) of this hub's workspaces."""
        return docker_logs.events(self.docker, self.docker_url, hub_id, self._cache)

    async def info(self) -> EngineInfo:
        """Version, API version and round-trip time of the engine."""
        return await docker_logs.engine_info(self.docker)


def docker_for_server(options: RuntimeOptions) -> DockerRuntime:
    """The runtime of one registered server (a Docker engine at ``Server.docker_url``)."""
    server, settings = options.server, options.settings
    if server is None or not server.docker_url:
        raise ValueError("a Docker runtime serves one registered Docker server")
    return DockerRuntime(
        server.docker_url,
        public_host=server.public_host,
        container_user=settings.container_user,
        pull=settings.pull_images,
        status_cache=options.cache,
        status_ttl=settings.status_cache_ttl,
        egress=settings.workspace_egress,
        workspaces_dir=settings.resolved_workspaces_dir,
        hub_id=settings.hub_id,
        home=settings.workspace_home,
        helper_image=settings.default_image,
    )


register_runtime(RuntimeKind.DOCKER, docker_for_server, on_servers=True)
