"""Kubernetes runtime: one workspace = one pod ``codehub-<id>`` in one namespace, its home a PVC.

The relay dials the pod IP and the IDE port (``Endpoint``): one hop, nothing that depends on kube-proxy or
cluster DNS, and the NetworkPolicy in front of the pod still applies (a per-workspace Service would add a
virtual IP and kube-proxy's rules for no gain, the hub being the only client). Stopping deletes the pod
(the PVC, the NetworkPolicy and the workspace row stay); a purge deletes the PVC too. Objects carry the
Docker runtime's labels (``codehub.workspace``, ``codehub.owner``, ``codehub.hub``) plus ``codehub.role``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc

from app.errors import Conflict
from app.models import RuntimeKind
from app.services.files.remote_storage import RemoteStorage
from app.services.files.storage import WorkspaceStorage
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
    StorageRef,
    Terminal,
    UnknownWorkspace,
    WorkspaceNotRunning,
    WorkspaceSpec,
    container_name,
)
from app.services.runtime.cache import DEFAULT_TTL, StatusCache, cached_status
from app.services.runtime.common import collect_exec, resolve_container_user
from app.services.runtime.docker_channel import HelperChannels
from app.services.runtime.kubernetes import images, manifests, pod_exec, pod_logs, states
from app.services.runtime.kubernetes.connection import KubeConnection, KubeError
from app.services.runtime.kubernetes.files import KubeVolumeFiles, helper_target
from app.services.runtime.kubernetes.start import LOG_TAIL_ON_FAILURE, start_pod
from app.services.runtime.kubernetes.watch import WatchCursor, selector, watch_pods
from app.settings import WorkspaceEgress

KIND: str = RuntimeKind.KUBERNETES
DEFAULT_USER = (1000, 1000)
NETWORKING = "apis/networking.k8s.io/v1"


class KubernetesRuntime:
    """Workspaces as pods in one namespace of one cluster."""

    kind: str = KIND

    def __init__(
        self,
        kubeconfig: str,
        namespace: str,
        *,
        container_user: str = "auto",
        pull: bool = False,
        status_cache: StatusCache | None = None,
        status_ttl: float = DEFAULT_TTL,
        egress: WorkspaceEgress = "open",
        hub_id: str = "",
        home: str = "/home/coder",
        helper_image: str = "",
        storage_size: str = "10Gi",
        storage_class: str = "",
        read_only_root: bool = True,
        schedule_timeout: float = 300.0,
        cpu_request_ratio: float = 1.0,
    ) -> None:
        self.conn = KubeConnection(kubeconfig, namespace)
        self.user = resolve_container_user(container_user) or DEFAULT_USER
        self.pull_policy = "IfNotPresent" if pull else "Never"
        self.egress, self.hub_id, self.home, self.helper_image = egress, hub_id, home, helper_image
        self.storage_size, self.storage_class = storage_size, storage_class
        self.read_only_root, self.schedule_timeout = read_only_root, schedule_timeout
        self.cpu_request_ratio = cpu_request_ratio
        self._cache, self._status_ttl = status_cache, status_ttl
        self._locks: dict[str, anyio.Lock] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._cursors: dict[str, WatchCursor] = {}  # a reconnecting watch resumes where it stopped
        self._storage_ready: set[str] = set()  # workspace ids whose project is known to exist
        self._file_channels = HelperChannels()  # one request loop per workspace, in the pod holding its claim

    async def __aenter__(self) -> KubernetesRuntime:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            await self._file_channels.close_all()
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(None, None, None)
        await self.conn.close()

    @property
    def tasks(self) -> anyio.abc.TaskGroup:
        """The task group the exec and terminal sockets run in (the runtime must be entered)."""
        if self._tasks is None:
            raise RuntimeError("KubernetesRuntime used outside `async with`")
        return self._tasks

    # -- objects -------------------------------------------------------------------------------------------

    def claim(self, workspace_id: str) -> str:
        """The PVC of a workspace's home."""
        return manifests.pvc_name(workspace_id)

    def helper_pod(self, workspace_id: str) -> str:
        """The file helper pod of a workspace."""
        return manifests.helper_name(workspace_id)

    async def ensure_claim(self, workspace_id: str, hub_id: str) -> None:
        """Create the home's PVC unless it exists; refuse one of another hub deployment."""
        body = manifests.pvc_manifest(workspace_id, hub_id, size=self.storage_size, storage_class=self.storage_class)
        try:  # created first, read when it exists (or creating is forbidden): one round trip for a new workspace
            found = await self.conn.request("POST", self.conn.path("persistentvolumeclaims"), body=body)
        except KubeError as exc:
            if exc.api_status not in (403, 409):
                raise
            path = self.conn.path("persistentvolumeclaims", self.claim(workspace_id))
            found = await self.conn.request("GET", path, missing_ok=True)
            if found is None:
                raise
        if ((found or {}).get("metadata", {}).get("labels") or {}).get(LABEL_HUB) != hub_id:
            raise Conflict(f"claim {self.claim(workspace_id)} belongs to another hub deployment", code="volume_taken")

    async def ensure_policy(self, workspace_id: str, hub_id: str, ide_port: int) -> None:
        """Create the workspace's NetworkPolicy unless it exists."""
        body = manifests.policy_manifest(workspace_id, hub_id, ide_port=ide_port, egress_open=self.egress == "open")
        try:
            await self.conn.request("POST", self.conn.path("networkpolicies", group=NETWORKING), body=body)
        except KubeError as exc:
            if exc.api_status != 409:
                raise

    async def pod(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.conn.request("GET", self.conn.path("pods", name), missing_ok=True)
        return found

    async def delete_pod(self, name: str, *, grace: float, uid: str | None = None, wait: bool = False) -> int | None:
        """Delete a pod (only that ``uid`` when given); ``wait``: until it is gone. The IDE's exit code if seen."""
        body: dict[str, Any] = {"gracePeriodSeconds": int(grace)}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            deleted = await self.conn.request("DELETE", self.conn.path("pods", name), body=body, missing_ok=True)
        except KubeError as exc:
            if exc.api_status != 409:  # 409: the uid differs, a newer pod holds the name
                raise
            return None
        if deleted is None:  # there was no such pod: nothing to wait for
            return None
        code: int | None = None
        deadline = time.monotonic() + grace + 60
        while wait and time.monotonic() < deadline:
            pod = await self.pod(name)
            if pod is None or (uid and pod["metadata"]["uid"] != uid):
                break
            ended = states.terminated(pod)
            if ended is not None and ended.get("exitCode") is not None:
                code = int(ended["exitCode"])
            await anyio.sleep(0.2)
        return code

    async def drop_status(self, workspace_id: str) -> None:
        """Forget the cached status numbers."""
        if self._cache is not None:
            await self._cache.drop(workspace_id)

    async def run_in(self, pod: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in a pod's IDE container to its end."""
        return await pod_exec.run(self.conn, pod, argv)

    async def tail_text(self, pod: str, tail: int = LOG_TAIL_ON_FAILURE) -> list[str]:
        """The pod's last lines ([] when it has none)."""
        try:
            text = await self.conn.text(self.conn.path("pods", pod) + "/log", params={"tailLines": str(tail)})
        except KubeError:
            return []
        return text.splitlines()[-tail:]

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(
        self, spec: WorkspaceSpec, *, ready_timeout: float = 60.0, progress: Progress | None = None
    ) -> Endpoint:
        """Create the claim, policy and pod (replacing a leftover pod), then wait for the IDE's HTTP."""
        return await start_pod(self, spec, ready_timeout=ready_timeout, progress=progress)

    async def stop(self, workspace_id: str, *, grace: float = 10.0) -> int | None:
        """Delete the pod with ``grace`` seconds for SIGTERM; the IDE's exit code (None when there was no pod)."""
        await self.drop_status(workspace_id)
        pod = await self.pod(container_name(workspace_id))
        if pod is None:
            return None
        code = await self.delete_pod(container_name(workspace_id), grace=grace, uid=pod["metadata"]["uid"], wait=True)
        ended = states.terminated(pod)
        if code is None and ended is not None and ended.get("exitCode") is not None:
            code = int(ended["exitCode"])
        return code

    async def poll(self, workspace_id: str) -> int | None:
        """None while running, else the exit code."""
        state = await self.inspect(workspace_id)
        if state is None:
            raise UnknownWorkspace(f"no pod for workspace {workspace_id}")
        return None if state.running else (state.exit_code if state.exit_code is not None else -1)

    async def inspect(self, workspace_id: str) -> RuntimeState | None:
        """The pod's state, or None."""
        pod = await self.pod(container_name(workspace_id))
        return None if pod is None else states.state_of(pod)

    async def list_states(self, hub_id: str) -> list[RuntimeState]:
        """Every workspace pod labelled with this hub id (one list call; file helpers are not workspaces)."""
        found = await self.conn.request("GET", self.conn.path("pods"), params={"labelSelector": selector(hub_id)})
        return [states.state_of(pod) for pod in (found or {}).get("items") or []]

    async def endpoint(self, workspace_id: str) -> Endpoint:
        """The pod IP and IDE port of the running pod."""
        pod = await self.pod(container_name(workspace_id))
        if pod is None or not states.is_running(pod) or not (pod.get("status") or {}).get("podIP"):
            raise WorkspaceNotRunning(f"workspace {workspace_id} is not running")
        ports = pod["spec"]["containers"][0].get("ports") or [{"containerPort": 8080}]
        return Endpoint(pod["status"]["podIP"], int(ports[0]["containerPort"]), pod["metadata"]["uid"])

    async def _running_pod(self, workspace_id: str) -> dict[str, Any]:
        pod = await self.pod(container_name(workspace_id))
        if pod is None or not states.is_running(pod):
            raise WorkspaceNotRunning(f"workspace {workspace_id} is not running")
        return pod

    async def status(self, workspace_id: str) -> ResourceStatus:
        """CPU, memory and processes from the kubelet's summary API (through the API server), cached briefly."""

        async def load() -> ResourceStatus:
            pod = await self._running_pod(workspace_id)
            node = pod["spec"]["nodeName"]
            summary = await self.conn.request("GET", f"/api/v1/nodes/{node}/proxy/stats/summary")
            found = states.resource_status(
                summary or {}, pod["metadata"]["name"], self.conn.namespace, states.memory_limit_of(pod)
            )
            if found is None:
                raise WorkspaceNotRunning(f"the kubelet has no numbers for workspace {workspace_id} yet")
            return found

        return await cached_status(self._cache, workspace_id, self._status_ttl, load)

    # -- logs, exec, terminal --------------------------------------------------------------------------

    async def logs(self, workspace_id: str, *, tail: int = 200, since: float | None = None) -> list[LogLine]:
        """The last ``tail`` lines (after ``since``) through ``pods/log``."""
        return await pod_logs.read(self.conn, workspace_id, tail=tail, since=since)

    async def follow_logs(
        self, workspace_id: str, *, tail: int = 0, since: float | None = None
    ) -> AsyncGenerator[LogLine, None]:
        """Lines as the IDE writes them; ends when the container ends."""
        async for line in pod_logs.follow(self.conn, workspace_id, tail=tail, since=since):
            yield line

    async def exec(self, workspace_id: str, request: ExecRequest) -> ExecResult:
        """Run a command to completion in the pod."""
        return await collect_exec(self.exec_stream(workspace_id, request))

    async def exec_stream(self, workspace_id: str, request: ExecRequest) -> AsyncIterator[ExecItem]:
        """Run a command in the pod, streaming its output."""
        pod = await self._running_pod(workspace_id)
        project = manifests.project_dir(_home_of(pod, self.home))
        async for item in pod_exec.exec_stream(
            self.tasks, self.conn, pod["metadata"]["name"], request, project=project
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
        """An interactive shell on a TTY in the pod."""
        pod = await self._running_pod(workspace_id)
        project = manifests.project_dir(_home_of(pod, self.home))
        return await pod_exec.open_terminal(
            self.tasks,
            self.conn,
            pod["metadata"]["name"],
            cols=cols,
            rows=rows,
            command=command,
            env=env,
            project=project,
        )

    # -- storage ---------------------------------------------------------------------------------------

    def storage_ref(self, workspace_id: str) -> StorageRef:
        """The workspace's home claim."""
        return StorageRef(kind="volume", name=self.claim(workspace_id))

    def storage(self, workspace_id: str, *, image: str = "") -> WorkspaceStorage:
        """The workspace's PVC, worked on in its pod (running) or a helper pod (stopped)."""

        async def target() -> tuple[str, str]:
            return await self._file_target(workspace_id, image or self.helper_image)

        async def purge() -> None:
            await self.purge_storage(workspace_id)

        files = KubeVolumeFiles(
            self.conn,
            workspace_id=workspace_id,
            home=self.home,
            user=self.user,
            target=target,
            purge=purge,
            ready=self._storage_ready,
            channels=self._file_channels,
            tasks=lambda: self.tasks,
        )
        return RemoteStorage(files, self._locks.setdefault(workspace_id, anyio.Lock()))

    async def _file_target(self, workspace_id: str, image: str) -> tuple[str, str]:
        pod = await self.pod(container_name(workspace_id))
        if pod is not None and states.is_running(pod):
            return pod["metadata"]["name"], manifests.IDE_CONTAINER
        return await helper_target(self, workspace_id, image)

    async def purge_storage(self, workspace_id: str) -> None:
        """Delete the helper pod and the PVC (missing is fine)."""
        await self.delete_pod(self.helper_pod(workspace_id), grace=0, wait=True)
        await self.conn.request(
            "DELETE", self.conn.path("persistentvolumeclaims", self.claim(workspace_id)), missing_ok=True
        )
        self._locks.pop(workspace_id, None)
        self._storage_ready.discard(workspace_id)

    async def remove(self, workspace_id: str, *, purge: bool = False, container_id: str | None = None) -> None:
        """Delete the pod (only ``container_id``, a pod uid, when given); the policy and helper with the
        workspace; ``purge``: the PVC too."""
        await self.drop_status(workspace_id)
        await self.delete_pod(container_name(workspace_id), grace=0, uid=container_id, wait=purge)
        if container_id is None:
            policies = self.conn.path(
                "networkpolicies", manifests.policy_name(workspace_id), group="apis/networking.k8s.io/v1"
            )
            await self.conn.request("DELETE", policies, missing_ok=True)
            await self.delete_pod(self.helper_pod(workspace_id), grace=0)
        if purge:
            await self.purge_storage(workspace_id)

    # -- images ----------------------------------------------------------------------------------------

    async def has_image(self, image: str) -> bool:
        """True when every schedulable node holds ``image`` (the kubelet's ``.status.images``; nothing pulled)."""
        return not await images.nodes_lacking(self.conn, image)

    async def pull_image(self, image: str, progress: Progress | None = None) -> None:
        """Pull ``image`` onto the nodes that lack it (a short-lived pod each), whatever the pull setting says."""
        await images.pull(self.conn, image, self.hub_id, self.user, progress)

    # -- watching --------------------------------------------------------------------------------------

    async def events(self, hub_id: str) -> AsyncIterator[RuntimeEvent]:
        """``start``/``die``/``oom``/``destroy`` of this hub's workspace pods, from a watch that resumes from the
        last ``resourceVersion`` when called again (and lists again on 410 Gone)."""
        cursor = self._cursors.setdefault(hub_id, WatchCursor())
        async for event in watch_pods(self.conn, hub_id, cursor):
            await self.drop_status(event.workspace_id)
            yield event

    async def info(self) -> EngineInfo:
        """Version and round-trip time of the API server."""
        return await self.conn.info()


def _home_of(pod: dict[str, Any], default: str) -> str:
    for var in pod["spec"]["containers"][0].get("env") or []:
        if var.get("name") == "HOME":
            return str(var.get("value") or default)
    return default


__all__ = ["KIND", "KubernetesRuntime"]
