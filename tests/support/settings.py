"""Settings for tests: only what a test gives, never the developer's ``CODEHUB_*`` environment."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from app.settings import Settings, load_settings
from tests.support.services import CODE_SERVER_IMAGE, TEST_IMAGE, need_docker

MADE_HUB_IDS: list[str] = []
"""Every hub id a test's settings named, in order: the root conftest removes what they left on the engines."""


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: only what is given, never the developer's CODEHUB_* environment."""
    base: dict[str, object] = {
        "data_dir": data_dir,
        "log_level": "warning",
        "runtime": "local",
        "docker_url": "none",
        "hub_id": f"t-{secrets.token_hex(4)}",
        "redis_prefix": f"codehub-test-{secrets.token_hex(4)}",
        # tests poll and share tokens across a module: rate limits are tested on purpose in tests/ops only
        "api_rate_per_minute": 0,
        "login_rate_per_minute": 0,
    }
    base.update(overrides)
    MADE_HUB_IDS.append(str(base["hub_id"]))
    return load_settings(environ={}, **base)


def hub_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an event hub under test: only what is given, never the developer's environment."""
    base: dict[str, Any] = {"data_dir": data_dir, "log_level": "warning", "sse_heartbeat": 30.0}
    base.update(overrides)
    return load_settings(environ={}, **base)


def docker_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    """A hub that runs the small test image on the local engine, with fast reconciliation."""
    values: dict[str, object] = {
        "database_url": database_url,
        "runtime": "docker",
        "docker_url": need_docker(TEST_IMAGE),
        "default_image": TEST_IMAGE,
        "workspace_mount": "/workspace",
        "default_cpu": 0.5,
        "default_memory_mb": 256,
        "start_timeout": 20,
        "stop_grace": 5,
        "reconcile_interval": 0.5,
        "orphan_grace": 1.0,
    }
    values.update(overrides)
    return make_settings(data_dir, **values)


def code_server_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    """A hub whose workspaces run the real code-server image on the local engine (skips without it)."""
    docker_url = need_docker(CODE_SERVER_IMAGE)
    return make_settings(
        data_dir,
        database_url=database_url,
        runtime="docker",
        docker_url=docker_url,
        default_image=CODE_SERVER_IMAGE,
        default_memory_mb=1024,
        start_timeout=90,
        stop_grace=2,
        idle_timeout=0,
        **overrides,
    )


def kube_settings(data_dir: Path, database_url: str, namespace: str, **overrides: object) -> Settings:
    """A hub whose workspaces are pods of the small test image in ``namespace`` of the test cluster."""
    from tests.support.kubernetes import CPU_REQUEST_RATIO, STORAGE_CLASS
    from tests.support.services import need_kubernetes

    values: dict[str, object] = {
        "database_url": database_url,
        "runtime": "kubernetes",
        "docker_url": "none",
        "kubeconfig": need_kubernetes(),
        "kube_namespace": namespace,
        "kube_storage_class": STORAGE_CLASS,
        "kube_storage_size": "1Gi",
        "kube_cpu_request_ratio": CPU_REQUEST_RATIO,
        "default_image": TEST_IMAGE,
        "default_cpu": 0.5,
        "default_memory_mb": 256,
        "start_timeout": 20,
        "stop_grace": 5,
        "reconcile_interval": 0.5,
        "orphan_grace": 1.0,
    }
    values.update(overrides)
    return make_settings(data_dir, **values)
