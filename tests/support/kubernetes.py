"""The test cluster: a namespace of its own per test module, PersistentVolumes to bind, runtimes on it."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from app.services.runtime.cache import MemoryStatusCache
from app.services.runtime.kubernetes.connection import KubeConnection
from app.services.runtime.kubernetes.runtime import KubernetesRuntime
from tests.support.services import TEST_IMAGE, need_kubernetes

STORAGE_CLASS = "local"  # the test cluster's WaitForFirstConsumer class of hostPath volumes
_REPO = Path(__file__).resolve().parents[2]
NODE_SCRIPTS = [up / "shared" / "engines" / "kubernetes-node.sh" for up in (_REPO.parent, _REPO.parent.parent)]
CPU_REQUEST_RATIO = 0.1  # a 2-core node runs many test workspaces


def ensure_volumes(count: int) -> None:
    """At least ``count`` PersistentVolumes Available (the test cluster has no provisioner; bound ones stay)."""
    for script in NODE_SCRIPTS:
        if script.exists():
            subprocess.run(["bash", str(script), "pv", str(count)], capture_output=True, timeout=120, check=False)
            return


@asynccontextmanager
async def kube_namespace(prefix: str = "t") -> AsyncIterator[str]:
    """A fresh namespace, deleted (with everything in it) at the end."""
    kubeconfig = need_kubernetes()
    name = f"codehub-{prefix}-{secrets.token_hex(4)}"
    conn = KubeConnection(kubeconfig, name)
    await conn.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    try:
        yield name
    finally:
        await conn.request("DELETE", f"/api/v1/namespaces/{name}", missing_ok=True)
        await conn.close()


def kube_runtime(namespace: str, *, hub_id: str = "", **options: object) -> KubernetesRuntime:
    """A runtime on ``namespace`` of the test cluster, with the test image as its file helper."""
    values: dict[str, object] = {
        "status_cache": MemoryStatusCache(),
        "status_ttl": 30,
        "hub_id": hub_id,
        "helper_image": TEST_IMAGE,
        "storage_class": STORAGE_CLASS,
        "storage_size": "1Gi",
        "cpu_request_ratio": CPU_REQUEST_RATIO,
    }
    values.update(options)
    return KubernetesRuntime(need_kubernetes(), namespace, **values)  # type: ignore[arg-type]


async def pods(namespace: str, selector: str) -> list[dict[str, object]]:
    """The pods of ``namespace`` matching a label selector: name, uid and whether the IDE runs."""
    from app.services.runtime.kubernetes.states import is_running

    conn = KubeConnection(need_kubernetes(), namespace)
    try:
        found = await conn.request("GET", conn.path("pods"), params={"labelSelector": selector})
    finally:
        await conn.close()
    return [
        {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"], "running": is_running(pod)}
        for pod in found.get("items") or []
        if not pod["metadata"].get("deletionTimestamp")
    ]


async def claims(namespace: str, selector: str) -> list[str]:
    """The names of the PersistentVolumeClaims of ``namespace`` matching a label selector."""
    conn = KubeConnection(need_kubernetes(), namespace)
    try:
        found = await conn.request("GET", conn.path("persistentvolumeclaims"), params={"labelSelector": selector})
    finally:
        await conn.close()
    return [
        claim["metadata"]["name"]
        for claim in found.get("items") or []
        if not claim["metadata"].get("deletionTimestamp")
    ]
