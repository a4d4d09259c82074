"""Templates on a Kubernetes server (the test cluster): an image its nodes lack is refused at create (with advice
for a cluster, not ``docker pull``), admins see where images are from the nodes' ``.status.images``, and
pre-pulls run a short-lived pod per node and report progress on the admin topic."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from app.services.runtime.base import ImageNotFound
from app.services.runtime.kubernetes import images
from app.services.runtime.kubernetes.images import reference
from tests.support.databases import fresh_database
from tests.support.kubernetes import kube_namespace, kube_runtime, pods
from tests.support.lifecycle import event_history
from tests.support.server import Hub, running_hub
from tests.support.services import TEST_IMAGE, kubectl
from tests.support.settings import kube_settings

pytestmark = pytest.mark.anyio
ABSENT_IMAGE = f"127.0.0.1:1/codehub-absent-{secrets.token_hex(4)}:none"  # a refused registry: fails at once


@pytest.fixture(scope="module")
async def namespace(kubeconfig: str) -> AsyncIterator[str]:
    """A namespace of this module's own."""
    async with kube_namespace("tpl") as name:
        yield name


@pytest.fixture(scope="module")
def module_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated SQLite database of this module's own."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("tpl-k8s-db")) as url:
        yield url


@pytest.fixture(scope="module")
async def kube_hub(namespace: str, module_sqlite: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    """A hub whose default server is ``namespace`` of the test cluster (pulling off)."""
    async with running_hub(kube_settings(tmp_path_factory.mktemp("tpl-k8s"), module_sqlite, namespace)) as hub:
        yield hub


def test_image_references_are_spelled_as_nodes_report_them() -> None:
    assert reference("busybox") == "docker.io/library/busybox:latest"
    assert reference("codehub/workspace:test") == "docker.io/codehub/workspace:test"
    assert reference("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    assert reference("registry.example.org/x@sha256:ab") == "registry.example.org/x@sha256:ab"
    assert reference("127.0.0.1:1/absent:none") == "127.0.0.1:1/absent:none"


async def test_an_image_the_nodes_lack_is_refused_at_create(kube_hub: Hub) -> None:
    token = await kube_hub.new_user("tpl-k8s-absent")
    async with kube_hub.client() as admin:
        tpl = (await admin.post("/api/admin/templates", json={"name": "absent", "image": ABSENT_IMAGE})).json()
        where = (await admin.get(f"/api/admin/templates/{tpl['id']}/images")).json()
        assert where["pull_allowed"] is False and [s["present"] for s in where["servers"]] == [False]
        present = (await admin.get("/api/admin/templates/default/images")).json()
        assert [s["present"] for s in present["servers"]] == [True]
    async with kube_hub.client(token) as user:
        r = await user.post("/api/workspaces", json={"name": "never", "template": "absent"})
        assert r.status_code == 422 and r.json()["error"] == "image_missing", r.text
        detail = r.json()["detail"]
        assert "pre-pull it" in detail and "every node of that cluster" in detail and "docker pull" not in detail


async def test_pre_pulls_report_progress_and_leave_no_pod(kube_hub: Hub, namespace: str) -> None:
    async with kube_hub.client() as admin:
        pull = (await admin.post("/api/admin/templates/default/pull", json={})).json()
        events = await event_history(admin, "admin", "template.pull.done")
        mine = [e for e in events if e["type"].startswith("template.pull") and e["data"]["pull_id"] == pull["pull_id"]]
        assert [e["type"] for e in mine] == ["template.pull.started", "template.pull.progress", "template.pull.done"]

        await admin.post("/api/admin/templates", json={"name": "unpullable", "image": ABSENT_IMAGE})
        pull = (await admin.post("/api/admin/templates/unpullable/pull")).json()
        failed = (await event_history(admin, "admin", "template.pull.failed"))[-1]["data"]
        assert failed["pull_id"] == pull["pull_id"] and failed["image"] == ABSENT_IMAGE
        assert "pulling it failed" in failed["error"] and "on node" in failed["error"]
    assert await pods(namespace, "codehub.role=pull") == []


async def test_a_pull_pod_brings_the_image_to_the_node(namespace: str) -> None:
    steps: list[dict[str, Any]] = []

    async def progress(kind: str, data: dict[str, Any]) -> None:
        steps.append({"kind": kind, **data})

    async with kube_runtime(namespace, hub_id="t-pull") as runtime:
        assert await runtime.has_image(TEST_IMAGE) and await runtime.has_image(f"docker.io/{TEST_IMAGE}")
        assert not await runtime.has_image(ABSENT_IMAGE)
        nodes = kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
        # on every node, though they hold it: IfNotPresent finds it there, the pod runs ``true`` and goes
        await images.pull(runtime.conn, TEST_IMAGE, "t-pull", runtime.user, progress, nodes=nodes)
        with pytest.raises(ImageNotFound, match="pulling it failed"):
            await runtime.pull_image(ABSENT_IMAGE)
    assert steps[-1] == {"kind": "pull", "image": TEST_IMAGE, "status": "done", "nodes": nodes}
    assert {step.get("node") for step in steps[:-1]} == set(nodes)
    assert await pods(namespace, "codehub.role=pull") == []
