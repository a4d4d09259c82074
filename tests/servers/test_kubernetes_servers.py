"""Kubernetes servers over real HTTP against the test cluster (scripts/kubernetes-node.sh): registering a
namespace, its check (version, SelfSubjectAccessReviews, nodes, quota), placement among Docker and Kubernetes
servers by the namespace's ResourceQuota, and the attacks: non-admins, fields of the other kind, kubeconfig
paths that escape, block or do not parse (never echoed), credentials that lack permissions or do not reach
the cluster."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.kubernetes import (
    ensure_volumes,
    kube_namespace,
    kubeconfig_for_token,
    service_account_token,
    wait_quota_counted,
)
from tests.support.lifecycle import wait_state
from tests.support.server import Hub, running_hub
from tests.support.services import TEST_IMAGE, kubectl, need_docker
from tests.support.settings import docker_settings, make_settings

pytestmark = pytest.mark.anyio
SECRET_TOKEN = "s3cr3t-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
async def namespace(kubeconfig: str) -> AsyncIterator[str]:
    """A namespace of this module's own on the test cluster (deleted after)."""
    async with kube_namespace("srv") as name:
        yield name


@pytest.fixture(scope="module")
async def hub(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A Docker hub without a server of its own: the tests register the servers they need (and place
    workspaces, never start them: pulling is on so that placing asks no runtime for its images)."""
    settings = docker_settings(tmp_path_factory.mktemp("data"), db_url, docker_url="none", pull_images=True)
    async with running_hub(settings) as running:
        yield running


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def register(admin: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await admin.post("/api/admin/servers", json={"name": name("k"), "kind": "kubernetes", **fields})


async def test_register_and_check_a_namespace(hub: Hub, kubeconfig: str, namespace: str) -> None:
    async with hub.client() as admin:
        r = await register(admin, kubeconfig=kubeconfig, namespace=namespace, labels={"site": "k"})
        assert r.status_code == 201, r.text
        server = r.json()
        assert server["kind"] == "kubernetes" and server["namespace"] == namespace
        assert server["kubeconfig"] == kubeconfig and server["docker_url"] is None
        listed = {s["id"]: s for s in (await admin.get("/api/admin/servers")).json()}
        assert listed[server["id"]]["kind"] == "kubernetes"

        r = await admin.post(f"/api/admin/servers/{server['id']}/test")
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["ok"] is True and report["error"] is None, report
        assert report["kind"] == "kubernetes" and report["version"] == "v1.20.2"
        assert report["namespace"] == namespace and report["nodes"] == 1 and report["quota"] is None
        allowed = {(a["resource"], a["verb"]): a["allowed"] for a in report["access"]}
        for wanted in [("pods", "create"), ("pods", "delete"), ("persistentvolumeclaims", "create"),
                       ("pods/exec", "create"), ("pods/log", "get"), ("networkpolicies", "create")]:  # fmt: skip
            assert allowed[wanted] is True, wanted

        quota = {"pods": "7", "requests.cpu": "1500m", "requests.memory": "3Gi"}
        await wait_quota_counted(namespace, "room", quota)
        report = (await admin.post(f"/api/admin/servers/{server['id']}/test")).json()
        assert report["quota"] == {"pods": 7, "cpu": 1.5, "memory_mb": 3072}, report
        kubectl("-n", namespace, "delete", "resourcequota", "room", "--wait=true")
        assert (await admin.delete(f"/api/admin/servers/{server['id']}")).status_code == 204


async def test_placement_follows_the_namespace_quota(hub: Hub, kubeconfig: str, namespace: str) -> None:
    """A Kubernetes server whose quota is used up is passed over for a Docker one (and named by id, it is a
    422); with room again it is chosen; a workspace asking for more CPU than the quota leaves goes elsewhere."""
    pool = secrets.token_hex(4)
    async with hub.client() as admin:
        r = await register(admin, kubeconfig=kubeconfig, namespace=namespace, labels={"pool": pool})
        cluster = r.json()
        cluster_name = cluster["name"]
        r = await admin.post(
            "/api/admin/servers",
            json={"name": f"zz-{cluster_name}", "docker_url": need_docker(), "labels": {"pool": pool}},
        )
        assert r.status_code == 201, r.text
        engine = r.json()
        template = await admin.post(
            "/api/admin/templates",
            json={"name": name("t"), "image": "codehub/workspace:test", "server_labels": {"pool": pool},
                  "default_cpu": 0.25, "max_cpu": 2, "default_memory_mb": 256, "max_memory_mb": 1024},
        )  # fmt: skip
        assert template.status_code == 201, template.text
        tid = template.json()["id"]

        async def create(**fields: Any) -> httpx.Response:
            return await admin.post("/api/workspaces", json={"name": name("w"), "template": tid, **fields})

        await wait_quota_counted(namespace, "full", {"pods": "0"})
        r = await create()
        assert r.status_code == 201 and r.json()["server_id"] == engine["id"], r.text
        r = await admin.post("/api/workspaces", json={"name": name("w"), "server_id": cluster["id"]})
        assert r.status_code == 422 and r.json()["error"] == "server_full", r.text
        assert "pods 0" in r.json()["detail"]

        kubectl("-n", namespace, "delete", "resourcequota", "full", "--wait=true")
        await wait_quota_counted(namespace, "cpu", {"requests.cpu": "500m", "limits.cpu": "500m"})
        r = await create()  # 0.25 cores fit: the cluster is first by name among the least loaded
        assert r.status_code == 201 and r.json()["server_id"] == cluster["id"], r.text
        r = await create(cpu=1)
        assert r.status_code == 201 and r.json()["server_id"] == engine["id"], r.text
        kubectl("-n", namespace, "delete", "resourcequota", "cpu", "--wait=true")

        # the hub moves files between servers of one kind only; without them the move is the admin's choice
        docker_ws = (await create(server_id=engine["id"])).json()
        assert docker_ws["server_id"] == engine["id"]
        place = f"/api/admin/workspaces/{docker_ws['id']}/place"
        r = await admin.post(place, json={"server_id": cluster["id"]})
        assert r.status_code == 422 and r.json()["error"] == "cross_kind_move", r.text
        r = await admin.post(place, json={"server_id": cluster["id"], "leave_files": True})
        assert r.status_code == 200 and r.json()["server_id"] == cluster["id"], r.text
        other = (await register(admin, kubeconfig=kubeconfig, namespace=namespace)).json()
        r = await admin.post(place, json={"server_id": other["id"]})  # no PVC copy between clusters either
        assert r.status_code == 422 and r.json()["error"] == "cross_kind_move", r.text


async def test_fields_of_the_other_kind_and_bad_values_are_422(hub: Hub, kubeconfig: str) -> None:
    async with hub.client() as admin:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"docker_url": "tcp://127.0.0.1:2375", "kubeconfig": kubeconfig, "namespace": "a"}, "bad_server_fields"),
            ({"namespace": "a"}, "bad_server_fields"),
            ({"kubeconfig": kubeconfig}, "bad_server_fields"),
            ({"kubeconfig": kubeconfig, "namespace": "../kube-system"}, "bad_namespace"),
            ({"kubeconfig": kubeconfig, "namespace": "Upper"}, "bad_namespace"),
            ({"kubeconfig": kubeconfig, "namespace": "a" * 64}, None),
        ]
        for fields, code in cases:
            r = await register(admin, **fields)
            assert r.status_code in (400, 422), (fields, r.text)
            if code:
                assert r.json()["error"] == code, (fields, r.text)
        r = await admin.post(
            "/api/admin/servers",
            json={"name": name("d"), "docker_url": "tcp://127.0.0.1:2375", "kubeconfig": kubeconfig},
        )
        assert r.status_code == 422 and r.json()["error"] == "bad_server_fields", r.text
        r = await admin.post("/api/admin/servers", json={"name": name("d"), "kind": "nomad", "docker_url": "x" * 9})
        assert r.status_code == 400, r.text
        r = await admin.post("/api/admin/servers", json={"name": name("d")})
        assert r.status_code == 422 and r.json()["error"] == "bad_server_fields", r.text


async def test_kubeconfig_paths_that_escape_block_or_do_not_parse(hub: Hub, kubeconfig: str, tmp_path: Path) -> None:
    """Relative and ``..`` paths, missing files, directories, devices, FIFOs (which would block a plain open)
    and files that are not kubeconfigs are 422 naming the path; nothing from the file is in the answer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"users:\n- name: admin\n  user: {{token: {SECRET_TOKEN}\n  :: [unclosed\n")
    shapeless = tmp_path / "shapeless.yaml"
    shapeless.write_text(f"users:\n- name: admin\n  user: {{token: {SECRET_TOKEN}}}\ncurrent-context: {SECRET_TOKEN}\n")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1 << 20 + 1))
    paths = [
        "relative/kubeconfig",
        f"{os.path.dirname(kubeconfig)}/../codehub-k8s/admin.kubeconfig",
        "/nonexistent/kubeconfig",
        str(tmp_path),
        "/dev/zero",
        str(fifo),
        str(broken),
        str(shapeless),
        str(big),
        "/etc/shadow",
        "in-cluster",  # the tests do not run in a pod
    ]
    async with hub.client() as admin:
        for path in paths:
            with anyio.fail_after(10):
                r = await register(admin, kubeconfig=path, namespace="default")
            assert r.status_code == 422 and r.json()["error"] == "bad_kubeconfig", (path, r.text)
            assert SECRET_TOKEN not in r.text, r.text
        assert SECRET_TOKEN not in (await admin.get("/api/admin/servers")).text


async def test_credentials_without_permissions_are_reported(hub: Hub, kubeconfig: str, namespace: str) -> None:
    """A service account that may only read pods: the check names what it lacks; its token is not shown."""
    reader = name("reader")
    kubectl("-n", namespace, "create", "serviceaccount", reader).check_returncode()
    kubectl("-n", namespace, "create", "role", reader, "--verb=get,list", "--resource=pods").check_returncode()
    kubectl(
        "-n", namespace, "create", "rolebinding", reader, f"--role={reader}", f"--serviceaccount={namespace}:{reader}"
    ).check_returncode()
    token = await service_account_token(namespace, reader)
    with kubeconfig_for_token(token) as path:
        async with hub.client() as admin:
            r = await register(admin, kubeconfig=str(path), namespace=namespace)
            assert r.status_code == 201, r.text
            report = (await admin.post(f"/api/admin/servers/{r.json()['id']}/test")).json()
            assert report["ok"] is False and report["version"] == "v1.20.2", report
            assert "create pods" in report["error"] and "create pods/exec" in report["error"], report
            allowed = {(a["resource"], a["verb"]): a["allowed"] for a in report["access"]}
            assert allowed[("pods", "get")] is True and allowed[("pods", "delete")] is False
            assert report["nodes"] is None  # a namespaced role cannot list nodes
            assert token not in str(report)
            await admin.delete(f"/api/admin/servers/{r.json()['id']}")


async def test_a_cluster_that_does_not_answer(hub: Hub) -> None:
    with kubeconfig_for_token(SECRET_TOKEN, server="https://127.0.0.1:1") as path:
        async with hub.client() as admin:
            r = await register(admin, kubeconfig=str(path), namespace="default")
            assert r.status_code == 201, r.text
            r = await admin.post(f"/api/admin/servers/{r.json()['id']}/test")
            assert r.status_code == 200 and r.json()["ok"] is False and r.json()["error"], r.text
            assert SECRET_TOKEN not in r.text
            listed = (await admin.get("/api/admin/servers")).text
            assert SECRET_TOKEN not in listed


async def test_non_admins_cannot_register_or_test(hub: Hub, kubeconfig: str) -> None:
    user = await hub.new_user(name("u"))
    async with hub.client(user) as client, hub.client() as admin:
        r = await register(client, kubeconfig=kubeconfig, namespace="default")
        assert r.status_code == 403, r.text
        target = (await register(admin, kubeconfig=kubeconfig, namespace="default")).json()
        assert (await client.post(f"/api/admin/servers/{target['id']}/test")).status_code == 403
        assert (await client.get("/api/admin/servers")).status_code == 403


async def test_runtime_kubernetes_makes_the_cluster_the_default_server(
    kubeconfig: str, namespace: str, tmp_path: Path, sqlite_url: str
) -> None:
    """``CODEHUB_RUNTIME=kubernetes``: the namespace is registered as the default server, and a workspace
    created without a server is placed there and runs as a pod (the hub then stops cleanly)."""
    ensure_volumes(4)
    settings = make_settings(
        tmp_path / "data",
        database_url=sqlite_url,
        runtime="kubernetes",
        kubeconfig=kubeconfig,
        kube_namespace=namespace,
        kube_storage_class="local",
        kube_storage_size="1Gi",
        default_image=TEST_IMAGE,
        default_cpu=0.1,
        default_memory_mb=128,
        start_timeout=120,
    )
    async with running_hub(settings) as hub, hub.client() as admin:
        servers = (await admin.get("/api/admin/servers")).json()
        assert [(s["kind"], s["namespace"], s["is_default"]) for s in servers] == [("kubernetes", namespace, True)]
        r = await admin.post("/api/workspaces", json={"name": "on-cluster"})
        assert r.status_code == 201 and r.json()["server_id"] == servers[0]["id"], r.text
        ws = r.json()
        assert (await admin.post(f"/api/workspaces/{ws['id']}/start")).status_code == 202
        running = await wait_state(admin, ws["id"], {"running", "failed"}, timeout=150)
        assert running["state"] == "running", running
        pods = kubectl("-n", namespace, "get", "pods", "-o", "name").stdout
        assert f"pod/codehub-{ws['id']}" in pods
        r = await admin.delete(f"/api/workspaces/{ws['id']}", params={"purge": "true"})
        assert r.status_code in (200, 204), r.text
