"""Finding the real services tests need: skip with a reason, or fail when CODEHUB_TEST_REQUIRE names them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from functools import cache

import pytest

POSTGRES_URL = os.environ.get("CODEHUB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CODEHUB_TEST_REDIS", "redis://127.0.0.1:6379/0")
DOCKER_URL = os.environ.get("CODEHUB_TEST_DOCKER", "unix:///var/run/docker.sock")
SECOND_DOCKER_URL = os.environ.get("CODEHUB_TEST_DOCKER2", "tcp://127.0.0.2:2375")
TEST_IMAGE = "codehub/workspace:test"
CODE_SERVER_IMAGE = "codehub/code-server:local"


def required() -> set[str]:
    """Services named in CODEHUB_TEST_REQUIRE (comma-separated): missing ones fail instead of skip."""
    return {s.strip() for s in os.environ.get("CODEHUB_TEST_REQUIRE", "").split(",") if s.strip()}


def need(service: str, available: bool, reason: str) -> None:
    """Skip (or fail, when required) the current test if ``service`` is not available."""
    if available:
        return
    message = f"{service} not available: {reason}"
    if service in required():
        pytest.fail(f"{message} (required by CODEHUB_TEST_REQUIRE)")
    pytest.skip(message)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@cache
def postgres_available() -> bool:
    """True when the test Postgres answers on its TCP port."""
    from urllib.parse import urlparse

    parsed = urlparse(POSTGRES_URL.replace("postgresql+psycopg", "postgresql"))
    return _port_open(parsed.hostname or "127.0.0.1", parsed.port or 5432)


@cache
def redis_available() -> bool:
    """True when the test Redis answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
        ok = bool(client.ping())
        client.close()
        return ok
    except Exception:
        return False


@cache
def docker_available() -> bool:
    """True when a Docker engine answers."""
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@cache
def image_available(image: str) -> bool:
    """True when ``image`` exists in the local engine."""
    if not docker_available():
        return False
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def need_postgres() -> str:
    """Skip/fail without Postgres; return its URL."""
    need("postgres", postgres_available(), f"nothing answers at {POSTGRES_URL}")
    return POSTGRES_URL


def need_redis() -> str:
    """Skip/fail without Redis; return its URL."""
    need("redis", redis_available(), f"no PONG from {REDIS_URL}")
    return REDIS_URL


def need_docker(image: str | None = None) -> str:
    """Skip/fail without a Docker engine (and, if named, a local image); return the engine URL."""
    need("docker", docker_available(), "`docker info` fails (start dockerd: `just services`)")
    if image:
        need("docker", image_available(image), f"image {image} missing (build it: `just services`)")
    return DOCKER_URL


@cache
def second_engine_available(image: str) -> bool:
    """True when the second engine (another "host", see scripts/second-docker-engine.sh) has ``image``."""
    if not shutil.which("docker"):
        return False
    check = ["docker", "-H", SECOND_DOCKER_URL, "image", "inspect", image]
    return subprocess.run(check, capture_output=True, timeout=20).returncode == 0


def need_second_engine(image: str = TEST_IMAGE) -> str:
    """Skip/fail (``docker2`` in CODEHUB_TEST_REQUIRE) without the second engine and ``image`` on it; its URL."""
    need(
        "docker2",
        second_engine_available(image),
        f"no engine with {image} at {SECOND_DOCKER_URL} (start it: scripts/second-docker-engine.sh start {image})",
    )
    return SECOND_DOCKER_URL


KUBECONFIG = os.environ.get("CODEHUB_TEST_KUBECONFIG", "/run/codehub-k8s/admin.kubeconfig")
KUBERNETES_NODE = "../shared/engines/kubernetes-node.sh"


@cache
def kubernetes_available() -> str:
    """ "" when the test cluster's API answers with the kubeconfig, else why not."""
    import concurrent.futures
    from pathlib import Path

    import anyio

    from app.services.runtime.kubernetes.connection import KubeConnection

    if not Path(KUBECONFIG).exists():
        return f"no kubeconfig at {KUBECONFIG}"

    def probe() -> str:
        info = anyio.run(KubeConnection(KUBECONFIG, "default").info)
        return "" if info.ok else str(info.error)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(probe).result(timeout=30)


def need_kubernetes() -> str:
    """Skip/fail (``kubernetes`` in CODEHUB_TEST_REQUIRE) without the test cluster; its kubeconfig path."""
    reason = kubernetes_available()
    need("kubernetes", not reason, f"{reason} (start it: {KUBERNETES_NODE} start {TEST_IMAGE} {CODE_SERVER_IMAGE})")
    return KUBECONFIG
