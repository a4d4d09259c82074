"""deploy/kubernetes against the test cluster: every manifest passes a server-side dry run, the Role is the
namespace's only and grants exactly what the hub's server check asks for (and nothing like Secrets), and a
hub using the manifests' service account finds every permission it needs, in its namespace and no other."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.services.runtime.kubernetes.cluster_checks import ACCESS, Access
from tests.support.kubernetes import kube_namespace, kubeconfig_for_token, service_account_token
from tests.support.server import running_hub
from tests.support.services import kubectl
from tests.support.settings import make_settings

pytestmark = pytest.mark.anyio
MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
ACCOUNT = "codehub-hub"
CLUSTER_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def documents() -> list[dict[str, Any]]:
    """Every object of deploy/kubernetes, in the order ``kubectl apply -f deploy/kubernetes`` takes them."""
    found: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def moved(docs: list[dict[str, Any]], namespace: str, suffix: str) -> list[dict[str, Any]]:
    """The objects rewritten into ``namespace``, cluster-wide names made unique with ``suffix``."""
    out = []
    for doc in json.loads(json.dumps(docs)):
        if doc["kind"] == "Namespace":
            continue
        if doc["kind"] in CLUSTER_KINDS:
            doc["metadata"]["name"] += suffix
        else:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += suffix
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        out.append(doc)
    return out


def grants(rules: list[dict[str, Any]], access: Access) -> bool:
    return any(
        access.group in rule["apiGroups"] and access.name in rule["resources"] and access.verb in rule["verbs"]
        for rule in rules
    )


def test_the_role_is_namespaced_and_grants_what_the_hub_checks() -> None:
    namespaces = {doc["metadata"].get("namespace") for doc in documents() if doc["kind"] not in CLUSTER_KINDS}
    assert namespaces == {"codehub"}
    (role,) = by_kind("Role")
    (cluster_role,) = by_kind("ClusterRole")
    for rule in role["rules"] + cluster_role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
    namespaced = [a for a in ACCESS if a.namespaced]
    assert all(grants(role["rules"], a) for a in namespaced), [a for a in namespaced if not grants(role["rules"], a)]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {
        "pods", "pods/log", "pods/exec", "persistentvolumeclaims", "events", "resourcequotas", "networkpolicies"
    }  # fmt: skip
    assert not {"escalate", "bind", "impersonate", "deletecollection"} & {
        v for rule in role["rules"] for v in rule["verbs"]
    }
    # the only cluster-wide grant: reading nodes and the kubelet's summary API through the API server
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"nodes", "nodes/proxy"}
    assert {v for rule in cluster_role["rules"] for v in rule["verbs"]} <= {"get", "list"}
    assert all(grants(cluster_role["rules"], a) for a in ACCESS if not a.namespaced)
    for binding in by_kind("RoleBinding") + by_kind("ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": "codehub"}]


def test_the_hub_deployment() -> None:
    (deployment,) = by_kind("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    assert pod["metadata"]["labels"]["codehub.role"] == "hub"  # what workspaces' NetworkPolicies admit
    assert pod["spec"]["serviceAccountName"] == ACCOUNT
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, key in [("CODEHUB_DATABASE_URL", "database-url"), ("CODEHUB_REDIS_URL", "redis-url"),
                      ("CODEHUB_SECRET_KEY", "secret-key")]:  # fmt: skip
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "codehub-hub", "key": key}
    assert env["CODEHUB_RUNTIME"]["value"] == "kubernetes" and env["CODEHUB_KUBECONFIG"]["value"] == "in-cluster"
    assert env["CODEHUB_KUBE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (service,) = by_kind("Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


@pytest.fixture(scope="module")
async def namespace(kubeconfig: str) -> AsyncIterator[str]:
    """A namespace of this module's own on the test cluster (deleted after)."""
    async with kube_namespace("deploy") as name:
        yield name


async def test_server_side_dry_run(namespace: str) -> None:
    """The API server validates every object (schema, references, admission) without keeping any."""
    docs = moved(documents(), namespace, f"-{secrets.token_hex(3)}")
    done = kubectl("apply", "--dry-run=server", "-f", "-", input_text=json.dumps({"kind": "List", "apiVersion": "v1",
                                                                               "items": docs}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(docs) and all("(server dry run)" in line for line in lines), done.stdout
    nothing = kubectl("-n", namespace, "get", "deployment,serviceaccount/codehub-hub,role", "-o", "name")
    assert "codehub-hub" not in nothing.stdout.replace("serviceaccount/default", "")
    # the namespace document itself is valid too
    (ns,) = by_kind("Namespace")
    dry = kubectl("apply", "--dry-run=server", "-f", "-", input_text=json.dumps(ns))
    assert dry.returncode == 0, dry.stderr


async def test_the_service_account_can_do_what_the_hub_needs_here_only(
    namespace: str, tmp_path: Path, sqlite_url: str
) -> None:
    suffix = f"-{secrets.token_hex(3)}"
    rbac = [doc for doc in moved(documents(), namespace, suffix) if doc["kind"] not in ("Deployment", "Service")]
    applied = kubectl("apply", "-f", "-", input_text=json.dumps({"kind": "List", "apiVersion": "v1", "items": rbac}))
    assert applied.returncode == 0, applied.stderr
    try:
        account = f"system:serviceaccount:{namespace}:{ACCOUNT}"

        def can(*args: str) -> bool:
            return kubectl("auth", "can-i", f"--as={account}", *args).stdout.strip() == "yes"

        assert can("create", "pods", "-n", namespace) and can("create", "pods/exec", "-n", namespace)
        assert not can("create", "pods", "-n", "default") and not can("list", "pods", "-n", "kube-system")
        assert not can("get", "secrets", "-n", namespace) and not can("create", "deployments", "-n", namespace)
        assert not can("create", "roles", "-n", namespace) and not can("delete", "nodes")

        token = await service_account_token(namespace, ACCOUNT)
        with kubeconfig_for_token(token) as path:
            settings = make_settings(tmp_path / "data", database_url=sqlite_url)
            async with running_hub(settings) as hub, hub.client() as admin:
                r = await admin.post(
                    "/api/admin/servers",
                    json={"name": "deployed", "kind": "kubernetes", "kubeconfig": str(path), "namespace": namespace},
                )
                assert r.status_code == 201, r.text
                report = (await admin.post(f"/api/admin/servers/{r.json()['id']}/test")).json()
                assert report["ok"] is True, report
                assert all(a["allowed"] for a in report["access"]), report["access"]
                assert report["nodes"] == 1
    finally:
        for kind in ("clusterrolebinding", "clusterrole"):
            kubectl("delete", kind, f"codehub-hub-node-stats{suffix}", "--ignore-not-found")
