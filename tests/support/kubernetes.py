"""The test cluster (scripts/kubernetes-node.sh): a namespace of its own per test module, PersistentVolumes to
bind, runtimes on it, what the runtime left there, ResourceQuotas the controller has counted, and
service-account tokens with kubeconfigs made from them."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import yaml

from app.services.runtime.cache import MemoryStatusCache
from app.services.runtime.kubernetes.connection import KubeConnection
from app.services.runtime.kubernetes.runtime import KubernetesRuntime
from tests.support.services import TEST_IMAGE, kubectl, need_kubernetes

STORAGE_CLASS = "local"  # the test cluster's WaitForFirstConsumer class of hostPath volumes
NODE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kubernetes-node.sh"
CPU_REQUEST_RATIO = 0.1  # a 2-core node runs many test workspaces


def ensure_volumes(count: int) -> None:
    """At least ``count`` PersistentVolumes Available (the test cluster has no provisioner; bound ones stay);
    needs root, as the cluster does."""
    if os.getuid() == 0:
        subprocess.run(["bash", str(NODE_SCRIPT), "pv", str(count)], capture_output=True, timeout=120, check=False)


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


async def wait_quota_counted(namespace: str, name: str, hard: dict[str, str], within: float = 30) -> None:
    """Create ResourceQuota ``name`` with ``hard`` and wait until the quota controller has filled its status."""
    spec = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}}
    made = kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(spec))
    made.check_returncode()
    with anyio.fail_after(within):
        while True:
            got = kubectl("-n", namespace, "get", "resourcequota", name, "-o", "json")
            status = json.loads(got.stdout or "{}").get("status") or {}
            if set(hard) <= set(status.get("hard") or {}) and set(hard) <= set(status.get("used") or {}):
                return
            await anyio.sleep(0.2)


async def service_account_token(namespace: str, account: str, within: float = 30) -> str:
    """The token of ``account`` (Kubernetes 1.20 writes it into a Secret for each service account)."""
    with anyio.fail_after(within):
        while True:
            got = kubectl("-n", namespace, "get", "serviceaccount", account, "-o", "jsonpath={.secrets[0].name}")
            if got.returncode == 0 and got.stdout.strip():
                secret = kubectl("-n", namespace, "get", "secret", got.stdout.strip(), "-o", "jsonpath={.data.token}")
                if secret.returncode == 0 and secret.stdout.strip():
                    return base64.b64decode(secret.stdout.strip()).decode()
            await anyio.sleep(0.2)


@contextmanager
def kubeconfig_for_token(token: str, *, server: str | None = None) -> Iterator[Path]:
    """A kubeconfig file for the test cluster (or ``server``) that authenticates with ``token``."""
    admin = yaml.safe_load(Path(need_kubernetes()).read_text())
    cluster = dict(admin["clusters"][0]["cluster"])
    if server:
        cluster["server"] = server
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    with tempfile.TemporaryDirectory(prefix="codehub-kubeconfig-") as folder:
        path = Path(folder) / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        yield path
