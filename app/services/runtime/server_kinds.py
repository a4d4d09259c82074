"""The two kinds of servers: what registering one needs, how it is checked, and the room it has.

A ``docker`` server is a Docker engine (``docker_url``); a ``kubernetes`` server is a namespace of a cluster
(``kubeconfig``: a file on the hub or ``in-cluster``, and ``namespace``). Checks of a Kubernetes server go
through a connection of their own (kr8s shares the client with the runtime's when the arguments match), so
an admin can test a server before any workspace runs there.
"""

from __future__ import annotations

import logging

import anyio
import msgspec

from app.errors import DomainError, Unprocessable
from app.models import RuntimeKind, Server
from app.services.runtime.base import EngineInfo, WorkspaceRuntime
from app.services.runtime.kubernetes.cluster_checks import (
    AccessResult,
    ClusterReport,
    Room,
    check_kubeconfig,
    check_namespace,
    cluster_report,
    quota_room,
)
from app.services.runtime.kubernetes.connection import KubeConnection

__all__ = [
    "SERVER_KINDS",
    "AccessResult",
    "ClusterReport",
    "Room",
    "ServerProbes",
    "ServerReport",
    "ServerTarget",
    "check_target",
]
log = logging.getLogger(__name__)
SERVER_KINDS = (RuntimeKind.DOCKER.value, RuntimeKind.KUBERNETES.value)
ROOM_TIMEOUT = 3.0


class ServerTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where a server is, checked: ``docker_url`` for Docker, ``kubeconfig`` and ``namespace`` for Kubernetes."""

    kind: str
    docker_url: str | None = None
    kubeconfig: str | None = None
    namespace: str | None = None


def check_target(
    kind: str, *, docker_url: str | None = None, kubeconfig: str | None = None, namespace: str | None = None
) -> ServerTarget:
    """The checked address of a new server of ``kind``; 422 with the reason for a field that does not belong
    to the kind, a missing one, or a kubeconfig that is not usable (its content is never echoed)."""
    if kind == RuntimeKind.DOCKER:
        if kubeconfig is not None or namespace is not None:
            raise Unprocessable(
                "kubeconfig and namespace are for kind 'kubernetes'; a Docker server has only docker_url",
                code="bad_server_fields",
            )
        if not docker_url:
            raise Unprocessable("a Docker server needs docker_url (unix://… or tcp://…)", code="bad_server_fields")
        if not docker_url.startswith(("unix://", "tcp://", "http://", "https://")):
            raise Unprocessable("docker_url must start with unix:// or tcp://", code="bad_docker_url")
        return ServerTarget(kind=kind, docker_url=docker_url)
    if kind == RuntimeKind.KUBERNETES:
        if docker_url is not None:
            raise Unprocessable(
                "docker_url is for kind 'docker'; a Kubernetes server has kubeconfig and namespace",
                code="bad_server_fields",
            )
        if not kubeconfig or not namespace:
            raise Unprocessable(
                "a Kubernetes server needs kubeconfig (a path on the hub or 'in-cluster') and namespace",
                code="bad_server_fields",
            )
        return ServerTarget(kind=kind, kubeconfig=check_kubeconfig(kubeconfig), namespace=check_namespace(namespace))
    raise Unprocessable(f"kind must be one of {', '.join(SERVER_KINDS)}", code="bad_server_kind")


class ServerReport(msgspec.Struct, frozen=True, kw_only=True):
    """A server's check: its engine or API server, and for Kubernetes the namespace's access, nodes, quota."""

    info: EngineInfo
    cluster: ClusterReport | None = None


class ServerProbes:
    """Checks and room of servers, with one connection per Kubernetes server (closed by ``aclose``)."""

    def __init__(self) -> None:
        self._kube: dict[str, KubeConnection] = {}

    def _connection(self, server: Server) -> KubeConnection:
        conn = self._kube.get(server.id)
        if conn is None or (conn.kubeconfig, conn.namespace) != (server.kubeconfig, server.namespace):
            conn = KubeConnection(server.kubeconfig or "", server.namespace or "default")
            self._kube[server.id] = conn
        return conn

    def needs_runtime(self, server: Server) -> bool:
        """True when ``report`` asks the server's runtime (a Docker engine); a Kubernetes server is checked
        through a connection of its own."""
        return server.kind != RuntimeKind.KUBERNETES

    async def report(self, server: Server, runtime: WorkspaceRuntime | None) -> ServerReport:
        """Check ``server``: a Docker engine's version through its ``runtime``, or a Kubernetes namespace's
        API server, access, nodes and quota (a failure is the answer's ``error``, never raised)."""
        if server.kind == RuntimeKind.KUBERNETES:
            cluster = await cluster_report(self._connection(server))
            return ServerReport(info=cluster.info, cluster=cluster)
        if runtime is None:
            return ServerReport(info=EngineInfo(ok=False, error="no runtime for this server"))
        return ServerReport(info=await runtime.info())

    async def room(self, server: Server) -> Room | None:
        """What a Kubernetes server's namespace quota leaves (None: no quota, a Docker server, or no answer
        within ``ROOM_TIMEOUT``: placement then goes by ``max_workspaces`` alone)."""
        if server.kind != RuntimeKind.KUBERNETES:
            return None
        try:
            with anyio.fail_after(ROOM_TIMEOUT):
                return await quota_room(self._connection(server))
        except (TimeoutError, DomainError) as exc:
            log.warning("no quota answer from server %s: %s", server.name, exc)
            return None

    def forget(self, server_id: str) -> None:
        """Drop a deleted server's connection."""
        self._kube.pop(server_id, None)

    async def aclose(self) -> None:
        """Close every connection."""
        connections, self._kube = list(self._kube.values()), {}
        for conn in connections:
            await conn.close()
