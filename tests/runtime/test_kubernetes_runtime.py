"""What only the Kubernetes runtime has: the pod's hardening, the claim and the NetworkPolicy, why a pending pod
waits, files of a stopped workspace through the helper pod, and a watch that resumes (the rest runs on both
runtimes in test_docker_runtime.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from app.services.files.patches import PatchLimits
from app.services.runtime.base import ExecRequest, StartFailed, WorkspaceSpec
from app.services.runtime.kubernetes.runtime import NETWORKING, KubernetesRuntime
from app.services.runtime.kubernetes.watch import WatchCursor
from app.services.runtime.kubernetes.watch import watch_pods as watch
from tests.support.kubernetes import claims, ensure_volumes, kube_namespace, kube_runtime, pods
from tests.support.runtime import spec_for

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def runtime(hub_id: str) -> AsyncIterator[KubernetesRuntime]:
    """A runtime on a namespace of its own, egress closed (to see the policy's egress rule)."""
    ensure_volumes(6)
    async with kube_namespace("k8s") as namespace, kube_runtime(namespace, hub_id=hub_id, egress="none") as rt:
        yield rt


@pytest.fixture(scope="module")
async def running(
    runtime: KubernetesRuntime, hub_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkspaceSpec]:
    """One running workspace for the read-only checks."""
    spec = spec_for(runtime, hub_id, tmp_path_factory.mktemp("k8s"), labels={"team": "blue", "note": "not a label!"})
    await runtime.start(spec, ready_timeout=30)
    yield spec
    await runtime.remove(spec.id, purge=True)


async def _get(runtime: KubernetesRuntime, resource: str, name: str, group: str = "api/v1") -> Any:
    return await runtime.conn.request("GET", runtime.conn.path(resource, name, group=group))


async def test_pod_is_labelled_limited_and_hardened(
    runtime: KubernetesRuntime, running: WorkspaceSpec, hub_id: str
) -> None:
    pod = await _get(runtime, "pods", f"codehub-{running.id}")
    labels = pod["metadata"]["labels"]
    assert labels["codehub.workspace"] == running.id and labels["codehub.owner"] == "7"
    assert labels["codehub.hub"] == hub_id and labels["team"] == "blue"
    assert pod["metadata"]["annotations"]["note"] == "not a label!"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    (ide,) = spec["containers"]
    assert ide["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert ide["resources"]["requests"] == {"cpu": "50m", "memory": "256Mi"}
    hardening = ide["securityContext"]
    assert hardening["allowPrivilegeEscalation"] is False and hardening["privileged"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]} and hardening["readOnlyRootFilesystem"] is True
    assert ide["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080, "scheme": "HTTP"}
    assert {"name": "FOO", "value": "bar"} in ide["env"]
    claim = next(v for v in spec["volumes"] if v["name"] == "home")["persistentVolumeClaim"]["claimName"]
    assert claim == f"codehub-home-{running.id}"
    assert pod["status"]["conditions"] and any(c["type"] == "Ready" for c in pod["status"]["conditions"])
    result = await runtime.exec(running.id, ExecRequest(command="touch /etc/x; id -u; touch ~/y && echo home-ok"))
    assert "Read-only file system" in result.stderr and result.stdout == "1000\nhome-ok\n"


async def test_claim_and_network_policy(runtime: KubernetesRuntime, running: WorkspaceSpec, hub_id: str) -> None:
    claim = await _get(runtime, "persistentvolumeclaims", f"codehub-home-{running.id}")
    assert claim["metadata"]["labels"]["codehub.hub"] == hub_id
    assert claim["spec"]["storageClassName"] == "local" and claim["status"]["phase"] == "Bound"
    policy = await _get(runtime, "networkpolicies", f"codehub-{running.id}", NETWORKING)
    rules = policy["spec"]
    assert rules["podSelector"]["matchLabels"] == {"codehub.workspace": running.id, "codehub.hub": hub_id}
    assert rules["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"codehub.role": "hub"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    assert rules["policyTypes"] == ["Ingress", "Egress"] and not rules.get("egress"), "egress none: nothing out"


async def test_pending_pod_says_why_and_leaves_nothing(runtime: KubernetesRuntime, hub_id: str, tmp_path: Path) -> None:
    spec = spec_for(runtime, hub_id, tmp_path, cpu=64.0)
    steps: list[tuple[str, dict[str, Any]]] = []

    async def progress(kind: str, data: dict[str, Any]) -> None:
        steps.append((kind, data))

    runtime.schedule_timeout = 3
    try:
        with pytest.raises(StartFailed) as caught:
            await runtime.start(spec, ready_timeout=3, progress=progress)
    finally:
        runtime.schedule_timeout = 300
    assert "still pending" in caught.value.detail and "Insufficient cpu" in caught.value.detail
    assert any(kind == "scheduling" and "Insufficient cpu" in data["detail"] for kind, data in steps), steps
    assert await runtime.inspect(spec.id) is None
    await runtime.remove(spec.id, purge=True)
    assert f"codehub-home-{spec.id}" not in await claims(runtime.conn.namespace, f"codehub.workspace={spec.id}")


async def test_files_of_a_stopped_workspace_go_through_a_helper_pod(
    runtime: KubernetesRuntime, hub_id: str, tmp_path: Path
) -> None:
    spec = spec_for(runtime, hub_id, tmp_path)
    storage = runtime.storage(spec.id, image=spec.image)
    await storage.write_file("before.txt", b"written before the first start")  # a claim made on demand
    await runtime.start(spec, ready_timeout=30)
    result = await runtime.exec(spec.id, ExecRequest(command="cat before.txt; echo from-ide > ide.txt"))
    assert result.stdout == "written before the first start"
    assert await runtime.stop(spec.id, grace=2) is not None
    assert (await storage.read_text("ide.txt", max_bytes=100)).content == "from-ide\n"
    patch = "--- a/ide.txt\n+++ b/ide.txt\n@@ -1 +1 @@\n-from-ide\n+patched while stopped\n"
    await storage.apply_patch(patch, limits=PatchLimits())
    helpers = await pods(runtime.conn.namespace, f"codehub.workspace={spec.id},codehub.role=files")
    assert [h["name"] for h in helpers] == [f"codehub-files-{spec.id}"]
    await runtime.start(spec, ready_timeout=30)
    assert await pods(runtime.conn.namespace, f"codehub.workspace={spec.id},codehub.role=files") == []
    result = await runtime.exec(spec.id, ExecRequest(command="cat ide.txt"))
    assert result.stdout == "patched while stopped\n"
    await runtime.remove(spec.id, purge=True)
    assert await claims(runtime.conn.namespace, f"codehub.workspace={spec.id}") == []


async def test_watch_resumes_and_lists_again_after_gone(
    runtime: KubernetesRuntime, hub_id: str, tmp_path: Path
) -> None:
    spec = spec_for(runtime, hub_id, tmp_path)
    cursor = WatchCursor()
    seen: list[str] = []

    async def follow(stop_after: str) -> None:
        async for event in watch(runtime.conn, hub_id, cursor):
            if event.workspace_id == spec.id:
                seen.append(event.event)
                if event.event == stop_after:
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow, "start")
        await anyio.sleep(0.5)
        await runtime.start(spec, ready_timeout=30)
        with anyio.fail_after(20):
            while "start" not in seen:
                await anyio.sleep(0.05)
    # while nobody watches the pod goes, and the cursor's version is made too old: 410 Gone, a list, the events
    await runtime.remove(spec.id)
    with anyio.fail_after(30):
        while await runtime.inspect(spec.id) is not None:
            await anyio.sleep(0.2)
    cursor.version = "1"
    with anyio.fail_after(20):
        await follow("destroy")
    assert seen[0] == "start" and seen[-1] == "destroy", seen
