"""The objects of one workspace, as core/v1 and networking/v1 bodies (pure functions, no API calls).

- Pod ``codehub-<id>``: the hub's labels, limits from the spec and requests equal to them (Guaranteed QoS;
  ``cpu_request_ratio`` below 1 requests less CPU, to pack idle IDEs), a non-root user,
  no privilege escalation, every capability dropped, the default seccomp profile, a read-only root when
  ``read_only_root`` (then ``/tmp`` is an emptyDir), no service-account token, no service links, a readiness
  probe on ``/healthz`` of the IDE port (the Docker runtime's health check), ``restartPolicy: Never`` (the
  hub owns the lifecycle).
- PersistentVolumeClaim ``codehub-home-<id>`` mounted at the home; kept across starts, deleted by a purge.
- NetworkPolicy ``codehub-<id>``: ingress to the IDE port only from the hub's pods
  (``codehub.role=hub``), so no workspace reaches another; with ``CODEHUB_WORKSPACE_EGRESS=none`` no egress.
- File helper pod ``codehub-files-<id>``: the workspace image running ``sleep``, mounting only the PVC,
  for file work while the workspace is stopped.
- Pull pod ``codehub-pull-…``: an admin's pre-pull of an image onto one node, running ``true``.
"""

from __future__ import annotations

import re
from typing import Any

from app.services.runtime.base import LABEL_HUB, LABEL_OWNER, LABEL_WORKSPACE, WorkspaceSpec, container_name
from app.services.runtime.ide_secret import require_password_auth

LABEL_ROLE = "codehub.role"
ROLE_WORKSPACE = "workspace"
ROLE_FILES = "files"
ROLE_HUB = "hub"
ROLE_PULL = "pull"
IDE_CONTAINER = "ide"
FILES_CONTAINER = "files"
PULL_CONTAINER = "pull"
HELPER_LIFETIME = 900
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def pvc_name(workspace_id: str) -> str:
    """The claim holding a workspace's home."""
    return f"codehub-home-{workspace_id}"


def helper_name(workspace_id: str) -> str:
    """The file helper pod of a stopped workspace."""
    return f"codehub-files-{workspace_id}"


def policy_name(workspace_id: str) -> str:
    """The NetworkPolicy of a workspace."""
    return container_name(workspace_id)


def project_dir(home: str) -> str:
    """The project directory below the home."""
    return f"{home.rstrip('/')}/project"


def workspace_labels(workspace_id: str, hub_id: str, owner: str = "", role: str = ROLE_WORKSPACE) -> dict[str, str]:
    """The labels every object of a workspace carries (the Docker runtime's keys, plus the role)."""
    labels = {LABEL_WORKSPACE: workspace_id, LABEL_HUB: hub_id, LABEL_ROLE: role}
    if owner:
        labels[LABEL_OWNER] = owner
    return labels


def _extra_labels(labels: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A template's labels: valid label values stay labels, the others become annotations."""
    kept: dict[str, str] = {}
    annotated: dict[str, str] = {}
    for key, value in labels.items():
        (kept if _LABEL_VALUE.fullmatch(value) else annotated)[key] = value
    return kept, annotated


def _quantity(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def pod_manifest(
    spec: WorkspaceSpec,
    *,
    user: tuple[int, int],
    read_only_root: bool,
    pull_policy: str,
    pvc: str,
    cpu_request_ratio: float = 1.0,
) -> dict[str, Any]:
    """The workspace's pod (CPU requested: ``cpu_request_ratio`` of the limit; memory: all of it)."""
    extra, annotations = _extra_labels(spec.labels)
    labels = {**extra, **workspace_labels(spec.id, spec.hub_id, spec.owner)}
    env = {**spec.env, "HOME": spec.home, **(spec.ide_secret.ide_env(generic=False) if spec.ide_secret else {})}
    limits = {"cpu": _quantity(spec.cpu), "memory": f"{spec.memory_mb}Mi"}
    requests = {**limits, "cpu": _quantity(spec.cpu * cpu_request_ratio)}
    mounts = [{"name": "home", "mountPath": spec.home}]
    volumes: list[dict[str, Any]] = [{"name": "home", "persistentVolumeClaim": {"claimName": pvc}}]
    if read_only_root:
        mounts.append({"name": "tmp", "mountPath": "/tmp"})  # noqa: S108  (an emptyDir of the pod)
        volumes.append({"name": "tmp", "emptyDir": {}})
    container: dict[str, Any] = {
        "name": IDE_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": pull_policy,
        "workingDir": spec.home,
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "ports": [{"name": "ide", "containerPort": spec.ide_port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": user[0],
            "runAsGroup": user[1],
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": read_only_root,
            "capabilities": {"drop": ["ALL"]},
        },
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": spec.ide_port},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.command:
        container["args"] = require_password_auth(spec.command) if spec.ide_secret else list(spec.command)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": spec.container_name, "labels": labels, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "hostname": spec.id,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": user[0],
                "runAsGroup": user[1],
                "fsGroup": user[1],
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
        },
    }


def pvc_manifest(workspace_id: str, hub_id: str, *, size: str, storage_class: str) -> dict[str, Any]:
    """The home's claim (the class's binding mode decides when it binds: ``WaitForFirstConsumer`` works)."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(workspace_id), "labels": workspace_labels(workspace_id, hub_id, role="home")},
        "spec": spec,
    }


def policy_manifest(workspace_id: str, hub_id: str, *, ide_port: int, egress_open: bool) -> dict[str, Any]:
    """Only the hub's pods reach the IDE port; egress open or none."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {LABEL_WORKSPACE: workspace_id, LABEL_HUB: hub_id}},
        "policyTypes": ["Ingress"] if egress_open else ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {LABEL_ROLE: ROLE_HUB}}}],
                "ports": [{"protocol": "TCP", "port": ide_port}],
            }
        ],
    }
    if not egress_open:
        spec["egress"] = []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(workspace_id),
            "labels": workspace_labels(workspace_id, hub_id, role="policy"),
        },
        "spec": spec,
    }


def helper_manifest(workspace_id: str, hub_id: str, *, image: str, home: str, user: tuple[int, int]) -> dict[str, Any]:
    """The file helper: the image's ``sleep`` with only the PVC, no network use, read-only root, no capabilities."""
    limits = {"cpu": "200m", "memory": "128Mi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": helper_name(workspace_id),
            "labels": workspace_labels(workspace_id, hub_id, role=ROLE_FILES),
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "activeDeadlineSeconds": HELPER_LIFETIME,
            "securityContext": {"runAsNonRoot": True, "runAsUser": user[0], "runAsGroup": user[1], "fsGroup": user[1]},
            "containers": [
                {
                    "name": FILES_CONTAINER,
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", str(HELPER_LIFETIME)],
                    "workingDir": home,
                    "resources": {"requests": limits, "limits": limits},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "home", "mountPath": home}],
                }
            ],
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": pvc_name(workspace_id)}}],
        },
    }


def pull_manifest(image: str, hub_id: str, *, node: str, user: tuple[int, int], lifetime: int) -> dict[str, Any]:
    """A pod that brings ``image`` onto ``node`` (pinned there) and runs ``true``, unprivileged, no volumes."""
    limits = {"cpu": "50m", "memory": "32Mi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "codehub-pull-", "labels": {LABEL_HUB: hub_id, LABEL_ROLE: ROLE_PULL}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "activeDeadlineSeconds": lifetime,
            "securityContext": {"runAsNonRoot": True, "runAsUser": user[0], "runAsGroup": user[1]},
            "containers": [
                {
                    "name": PULL_CONTAINER,
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["true"],
                    "resources": {"requests": limits, "limits": limits},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
