"""Reconciliation with a Docker server and a Kubernetes server in one deployment: each workspace is judged only
by the runtime of the server that holds it, and only what carries this deployment's hub id and has no
workspace in its database is an orphan (a leftover of a workspace placed elsewhere is not)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from tests.support.kubernetes import CPU_REQUEST_RATIO, STORAGE_CLASS, ensure_volumes, kube_namespace, pods
from tests.support.lifecycle import create
from tests.support.runtime import containers, remove_hub_containers
from tests.support.server import Hub, running_hub
from tests.support.services import TEST_IMAGE, kubectl, need_kubernetes
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio


@dataclass
class Mixed:
    """A hub with its local Docker engine and a namespace of the test cluster as servers."""

    hub: Hub
    namespace: str
    docker_id: str
    cluster_id: str


@pytest.fixture
async def mixed(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Mixed]:
    """The hub (Docker by default) with the cluster registered as a second server."""
    ensure_volumes(2)
    settings = docker_settings(
        tmp_path / "data",
        sqlite_url,
        kube_storage_class=STORAGE_CLASS,
        kube_storage_size="1Gi",
        kube_cpu_request_ratio=CPU_REQUEST_RATIO,
    )
    try:
        async with kube_namespace("mix") as namespace, running_hub(settings) as hub, hub.client() as admin:
            docker_id = next(s["id"] for s in (await admin.get("/api/admin/servers")).json() if s["is_default"])
            body = {"name": "cluster", "kind": "kubernetes", "kubeconfig": need_kubernetes(), "namespace": namespace}
            r = await admin.post("/api/admin/servers", json=body)
            assert r.status_code == 201, r.text
            yield Mixed(hub, namespace, docker_id, r.json()["id"])
    finally:
        remove_hub_containers(settings.hub_id)


def leftover_container(hub_id: str, workspace_id: str, name: str, *extra: str) -> None:
    """A running container labelled as a workspace of ``hub_id`` on the local engine (and with ``extra``)."""
    labels = ["--label", f"codehub.hub={hub_id}", "--label", f"codehub.workspace={workspace_id}"]
    labels += [arg for label in extra for arg in ("--label", label)]
    subprocess.run(["docker", "run", "-d", "--name", name, *labels, TEST_IMAGE], check=True, capture_output=True)


def leftover_pod(namespace: str, hub_id: str, workspace_id: str, name: str) -> None:
    """A workspace pod of ``hub_id`` in ``namespace`` (labelled as the runtime labels its pods)."""
    labels = {"codehub.hub": hub_id, "codehub.workspace": workspace_id, "codehub.role": "workspace"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "ide", "image": TEST_IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "600"]}
            ],
        },
    }
    made = kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(pod))
    assert made.returncode == 0, made.stderr


async def test_each_workspace_is_judged_by_its_own_server(mixed: Mixed) -> None:
    hub_id = mixed.hub.settings.hub_id
    async with mixed.hub.client() as client:
        on_docker = await create(client, "on-docker", server_id=mixed.docker_id)
        on_cluster = await create(client, "on-cluster", server_id=mixed.cluster_id)
        for ws in (on_docker, on_cluster):
            r = await client.post(f"/api/workspaces/{ws['id']}/start", params={"wait": "true"})
            assert r.json()["state"] == "running", r.text
        # leftovers of earlier placements on the other server, true orphans, and another deployment's pod
        ghost = "g" + secrets.token_hex(5)
        leftover_container(hub_id, on_cluster["id"], f"codehub-{on_cluster['id']}")
        leftover_container(hub_id, ghost, f"codehub-{ghost}")
        leftover_pod(mixed.namespace, hub_id, on_docker["id"], f"codehub-{on_docker['id']}")
        leftover_pod(mixed.namespace, hub_id, ghost, f"codehub-{ghost}")
        leftover_pod(mixed.namespace, "hub-someone-else", ghost, "codehub-theirs")
        # a pod's pause container, had the kubelet run on this engine (dockershim copies the pod's labels)
        sandbox = f"k8s_POD_codehub-{on_cluster['id']}"
        leftover_container(hub_id, on_cluster["id"], sandbox, "io.kubernetes.pod.uid=0000")

        with anyio.fail_after(20):
            while containers(f"codehub.workspace={ghost}") or await pods(
                mixed.namespace, f"codehub.hub={hub_id},codehub.workspace={ghost}"
            ):
                await anyio.sleep(0.25)
        await anyio.sleep(2)  # several more passes, past the orphan grace

        for ws in (on_docker, on_cluster):
            body = (await client.get(f"/api/workspaces/{ws['id']}")).json()
            assert body["state"] == "running", (ws["name"], body["state_reason"])
        assert sorted(c["Names"] for c in containers(f"codehub.workspace={on_cluster['id']}")) == sorted(
            [f"codehub-{on_cluster['id']}", sandbox]
        )
        assert [p["name"] for p in await pods(mixed.namespace, f"codehub.workspace={on_docker['id']}")] == [
            f"codehub-{on_docker['id']}"
        ]
        assert [p["name"] for p in await pods(mixed.namespace, "codehub.hub=hub-someone-else")] == ["codehub-theirs"]
        for ws in (on_docker, on_cluster):
            assert (await client.delete(f"/api/workspaces/{ws['id']}")).status_code == 204
        subprocess.run(["docker", "rm", "-f", sandbox], capture_output=True)
