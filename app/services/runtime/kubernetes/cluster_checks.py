"""A Kubernetes server as admins and placement see it: its kubeconfig checked at registration, the
namespace's access (``SelfSubjectAccessReview``), the node count, and the room the namespace's ResourceQuota
leaves.

Nothing here echoes a kubeconfig's content: a file that does not parse is named by its path and by what is
wrong with its shape, never by a value from it (tokens, keys and passwords live in the same file).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import anyio
import msgspec
import yaml

from app.errors import DomainError, Unprocessable
from app.services.runtime.base import EngineInfo
from app.services.runtime.kubernetes.connection import IN_CLUSTER, SERVICE_ACCOUNT, KubeConnection

MAX_KUBECONFIG_BYTES = 1 << 20
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CHECK_TIMEOUT = 10.0


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """One permission the hub's runtime uses; ``required``: workspaces cannot run without it."""

    resource: str
    verb: str
    group: str = ""
    subresource: str = ""
    namespaced: bool = True
    required: bool = True

    @property
    def name(self) -> str:
        """``pods/exec`` style."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _each(resource: str, verbs: str, **extra: Any) -> list[Access]:
    return [Access(resource=resource, verb=verb, **extra) for verb in verbs.split()]


ACCESS: tuple[Access, ...] = (
    *_each("pods", "create get list watch delete"),
    *_each("persistentvolumeclaims", "create get list delete"),
    # a WebSocket exec is a GET (verb get) before Kubernetes 1.30, a POST is create: the Role grants both
    *_each("pods", "create get", subresource="exec"),
    *_each("pods", "get", subresource="log"),
    *_each("networkpolicies", "create get delete", group="networking.k8s.io"),
    *_each("resourcequotas", "list", required=False),
    *_each("nodes", "list", namespaced=False, required=False),
    *_each("nodes", "get", subresource="proxy", namespaced=False, required=False),
)
"""What ``POST /api/admin/servers/{id}/test`` asks about; the optional ones degrade (no quota-aware placement,
no node count, no CPU/memory stats) instead of breaking workspaces."""


class AccessResult(msgspec.Struct, frozen=True, kw_only=True):
    """The API server's answer for one permission in the namespace."""

    resource: str
    verb: str
    allowed: bool
    required: bool
    reason: str | None = None


class Room(msgspec.Struct, frozen=True, kw_only=True):
    """What the namespace's ResourceQuotas leave (the tightest of them); None where no quota limits it."""

    pods: int | None = None
    cpu: float | None = None
    """Cores."""
    memory_mb: int | None = None

    def fits(self, cpu: float | None = None, memory_mb: int | None = None) -> bool:
        """True when one more pod asking for ``cpu`` cores and ``memory_mb`` (requests and limits) fits."""
        if self.pods is not None and self.pods < 1:
            return False
        if cpu is not None and self.cpu is not None and self.cpu < cpu:
            return False
        return memory_mb is None or self.memory_mb is None or self.memory_mb >= memory_mb


class ClusterReport(msgspec.Struct, frozen=True, kw_only=True):
    """Answer of a Kubernetes server's check: the API server, the namespace's access, nodes and quota."""

    info: EngineInfo
    namespace: str
    access: list[AccessResult] = msgspec.field(default_factory=list)
    nodes: int | None = None
    """Nodes the hub's credentials can list (None: not allowed to list them)."""
    quota: Room | None = None
    """None when no ResourceQuota limits the namespace (or the hub may not read them)."""


def check_namespace(namespace: str) -> str:
    """``namespace`` when it is a valid namespace name (a DNS-1123 label), else 422 ``bad_namespace``."""
    if not NAMESPACE.match(namespace):
        raise Unprocessable(
            "namespace must be a DNS label: lower-case letters, digits and '-', at most 63 characters",
            code="bad_namespace",
        )
    return namespace


def check_kubeconfig(value: str) -> str:
    """``value`` when it is ``in-cluster`` (and the hub runs in a pod) or the absolute path of a readable
    kubeconfig file on the hub whose current context names a cluster and a user in it; else 422
    ``bad_kubeconfig`` naming the path and the problem, never the file's content."""
    if value == IN_CLUSTER:
        if not os.path.isfile(os.path.join(SERVICE_ACCOUNT, "token")):
            raise Unprocessable(
                f"kubeconfig 'in-cluster' needs the hub to run in a pod with a service account ({SERVICE_ACCOUNT} "
                "has no token here); give the path of a kubeconfig file instead",
                code="bad_kubeconfig",
            )
        return value
    if not value.startswith("/") or "\0" in value or ".." in value.split("/"):
        raise Unprocessable(
            "kubeconfig must be 'in-cluster' or an absolute path on the hub without '..'", code="bad_kubeconfig"
        )
    path = os.path.normpath(value)
    not_regular = Unprocessable(f"kubeconfig {path} is not a regular file of at most 1 MiB", code="bad_kubeconfig")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise not_regular  # before opening: a FIFO would block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_KUBECONFIG_BYTES:
                raise not_regular
            raw = handle.read(MAX_KUBECONFIG_BYTES + 1)
    except OSError:
        raise Unprocessable(f"kubeconfig {path} is not a file the hub can read", code="bad_kubeconfig") from None
    if len(raw) > MAX_KUBECONFIG_BYTES:
        raise not_regular
    problem = _kubeconfig_problem(raw)
    if problem:
        raise Unprocessable(f"kubeconfig {path} is not usable: {problem}", code="bad_kubeconfig")
    return path


def _kubeconfig_problem(raw: bytes) -> str | None:
    try:
        config = yaml.safe_load(raw)
    except (yaml.YAMLError, UnicodeDecodeError):
        return "it does not parse as YAML"  # the parser's message quotes the file
    if not isinstance(config, dict):
        return "it is not a YAML mapping"
    named: dict[str, dict[str, Any]] = {}
    for section in ("clusters", "users", "contexts"):
        entries = config.get(section)
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
            return f"it has no list of named {section}"
        named[section] = {str(e["name"]): e for e in entries}
    context = named["contexts"].get(str(config.get("current-context") or ""))
    if context is None or not isinstance(context.get("context"), dict):
        return "its current-context names no context in the file"
    cluster = named["clusters"].get(str(context["context"].get("cluster") or ""))
    if cluster is None or not isinstance(cluster.get("cluster"), dict):
        return "its current context names no cluster in the file"
    if not str(cluster["cluster"].get("server") or "").startswith(("https://", "http://")):
        return "its cluster has no https:// server address"
    if str(context["context"].get("user") or "") not in named["users"]:
        return "its current context names no user in the file"
    return None


async def _review(conn: KubeConnection, access: Access) -> AccessResult:
    attributes = {"verb": access.verb, "resource": access.resource, "group": access.group}
    if access.subresource:
        attributes["subresource"] = access.subresource
    if access.namespaced:
        attributes["namespace"] = conn.namespace
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = await conn.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body)
    status = (answer or {}).get("status") or {}
    reason = status.get("reason") or status.get("evaluationError") or None
    return AccessResult(
        resource=access.name, verb=access.verb, allowed=bool(status.get("allowed")), required=access.required,
        reason=str(reason)[:300] if reason else None,
    )  # fmt: skip


async def _count_nodes(conn: KubeConnection) -> int | None:
    try:
        answer = await conn.request("GET", "/api/v1/nodes", params={"limit": 500})
    except DomainError:
        return None
    return len((answer or {}).get("items") or [])


async def cluster_report(conn: KubeConnection) -> ClusterReport:
    """Ask the API server of ``conn`` for its version, every ``ACCESS`` review, the nodes and the quota.

    A failure is part of the answer (``info.ok`` false with the error), never raised."""
    info = await conn.info()
    if not info.ok:
        return ClusterReport(info=info, namespace=conn.namespace)
    results: dict[int, AccessResult] = {}
    extra: dict[str, Any] = {}

    async def review(index: int, access: Access) -> None:
        results[index] = await _review(conn, access)

    async def nodes() -> None:
        extra["nodes"] = await _count_nodes(conn)

    async def quota() -> None:
        extra["quota"] = await quota_room(conn)

    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for index, access in enumerate(ACCESS):
                    tg.start_soon(review, index, access)
                tg.start_soon(nodes)
                tg.start_soon(quota)
    except TimeoutError:
        return ClusterReport(
            info=EngineInfo(ok=False, error=f"the access checks did not finish within {CHECK_TIMEOUT:g} s"),
            namespace=conn.namespace,
        )
    except DomainError as exc:
        return ClusterReport(info=EngineInfo(ok=False, error=exc.detail), namespace=conn.namespace)
    answers = [results[i] for i in range(len(ACCESS))]
    missing = [f"{a.verb} {a.resource}" for a in answers if a.required and not a.allowed]
    if missing:
        error = f"the hub's credentials may not {', '.join(missing)} in namespace {conn.namespace}"
        info = EngineInfo(ok=False, version=info.version, api_version=info.api_version, latency_ms=info.latency_ms,
                          error=error)  # fmt: skip
    return ClusterReport(info=info, namespace=conn.namespace, access=answers, **extra)


async def quota_room(conn: KubeConnection) -> Room | None:
    """The room the namespace's ResourceQuotas leave (hard - used, the tightest quota per resource); None
    when no quota limits pods, CPU or memory there, or the hub may not read them."""
    try:
        answer = await conn.request("GET", conn.path("resourcequotas"))
    except DomainError:
        return None
    pods: list[float] = []
    cpu: list[float] = []
    memory: list[float] = []
    for item in (answer or {}).get("items") or []:
        status = item.get("status") or {}
        hard, used = status.get("hard") or {}, status.get("used") or {}
        for key, into in (
            ("pods", pods), ("count/pods", pods),
            ("cpu", cpu), ("requests.cpu", cpu), ("limits.cpu", cpu),
            ("memory", memory), ("requests.memory", memory), ("limits.memory", memory),
        ):  # fmt: skip
            if key in hard:
                try:
                    into.append(parse_quantity(str(hard[key])) - parse_quantity(str(used.get(key, "0"))))
                except ValueError:
                    continue
    if not (pods or cpu or memory):
        return None
    return Room(
        pods=int(min(pods)) if pods else None,
        cpu=round(min(cpu), 3) if cpu else None,
        memory_mb=int(min(memory) // (1 << 20)) if memory else None,
    )


_SUFFIXES = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``, ``1e3``) as a plain number (cores, bytes, count)."""
    match = _QUANTITY.match(text.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]
