"""The test cluster (scripts/kubernetes-node.sh) as tests use it through kubectl: namespaces of their own,
ResourceQuotas the controller has counted, service-account tokens and kubeconfigs made from them."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import yaml

from tests.support.services import kubectl, need_kubernetes

NODE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kubernetes-node.sh"


def ensure_volumes(count: int) -> None:
    """At least ``count`` hostPath PersistentVolumes of class ``local`` Available (the cluster has no
    provisioner); needs root, as the cluster does."""
    if os.getuid() == 0:
        subprocess.run(["bash", str(NODE_SCRIPT), "pv", str(count)], capture_output=True, timeout=120, check=False)


@contextmanager
def made_namespace(prefix: str) -> Iterator[str]:
    """A new namespace ``codehub-t-<prefix>-<hex>``, deleted (without waiting) afterwards."""
    name = f"codehub-t-{prefix}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name).check_returncode()
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


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
