"""Parsing and small policies of the Docker runtime: engine answers → runtime structs, publish address, pulls."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from app import metrics
from app.services.runtime.base import (
    LABEL_HUB,
    LABEL_OWNER,
    LABEL_WORKSPACE,
    ImageNotFound,
    LogLine,
    Progress,
    ResourceStatus,
    RuntimeState,
    RuntimeUnavailable,
    WorkspaceSpec,
)
from app.services.runtime.common import iso_from_unix, unix_from_iso

_EXITED = re.compile(r"Exited \((-?\d+)\)")
KUBELET_POD = "io.kubernetes.pod.uid"
"""On a container the kubelet made through dockershim: its pod's (the pause container carries the pod's labels,
ours included), which the Kubernetes runtime judges, never this engine's runtime."""
MIB = 1024 * 1024
# Root inside the container (images that start as root and drop to a user, like code-server's
# official entrypoint) needs to fix ownership (CHOWN, DAC_OVERRIDE, FOWNER), switch user
# (SETUID, SETGID) and signal its non-root child (KILL: dumb-init/tini forwarding SIGTERM).
# A non-root container user gets none of these: no-new-privileges blocks setuid/file caps.
IDE_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")


def container_config(
    spec: WorkspaceSpec, *, network: str, publish_ip: str | None, user: tuple[int, int] | None
) -> dict[str, Any]:
    """The engine's create-container body for a workspace on ``network``, its IDE port published on
    ``publish_ip`` (None: not published), running as ``user`` (None: the image's)."""
    port = f"{spec.ide_port}/tcp"
    published = {} if publish_ip is None else {port: [{"HostIp": publish_ip, "HostPort": ""}]}
    env = {**spec.env, **(spec.ide_secret.ide_env(generic=False) if spec.ide_secret else {})}
    if spec.storage.kind == "volume":
        env.setdefault("HOME", spec.home)  # the home is the volume, whatever the image's passwd says
    volume = spec.storage.kind == "volume"
    config: dict[str, Any] = {
        "Image": spec.image,
        "Hostname": spec.id,
        "WorkingDir": project_dir(spec.home) if volume else spec.mount,
        "Labels": {**spec.labels, LABEL_WORKSPACE: spec.id, LABEL_OWNER: spec.owner, LABEL_HUB: spec.hub_id},
        "Env": [f"{key}={value}" for key, value in env.items()],
        "ExposedPorts": {port: {}},
        "HostConfig": {
            **(
                {"Mounts": [{"Type": "volume", "Source": spec.storage.name, "Target": spec.home}]}
                if volume
                else {"Binds": [f"{spec.storage.name}:{spec.mount}:rw"]}
            ),
            "NetworkMode": network,
            "PortBindings": published,
            "NanoCpus": int(spec.cpu * 1e9),
            "Memory": spec.memory_mb * MIB,
            "MemorySwap": spec.memory_mb * MIB,
            "PidsLimit": spec.pids_limit,
            "Privileged": False,
            "CapDrop": ["ALL"],
            "CapAdd": list(IDE_CAPABILITIES),
            "SecurityOpt": ["no-new-privileges:true"],
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        },
    }
    if user is not None:
        config["User"] = f"{user[0]}:{user[1]}"
    if spec.command:
        config["Cmd"] = list(spec.command)
    return config


def project_dir(home: str) -> str:
    """The project directory inside a workspace whose home is a volume."""
    return f"{home.rstrip('/')}/project"


@contextmanager
def engine_errors(url: str) -> Iterator[None]:
    """Turn "cannot reach the engine" into ``RuntimeUnavailable``."""
    try:
        yield
    except DockerError as exc:
        if exc.status == 900:
            raise RuntimeUnavailable(f"Docker engine at {url} is not answering: {exc.message}") from exc
        raise
    except (aiohttp.ClientError, OSError) as exc:
        raise RuntimeUnavailable(f"Docker engine at {url} is not answering: {exc}") from exc


def publish_address(docker_url: str, public_host: str | None) -> tuple[str, str]:
    """(host the hub dials, host the IDE port is published on) for an engine.

    Loopback for a local engine, else the address the hub dials (``public_host``, or the engine URL's
    host): never every address, so a workspace port is only open where the hub needs it.
    """
    if public_host:
        return public_host, public_host
    if docker_url.startswith(("tcp://", "http://", "https://")):
        host = urlparse(docker_url).hostname or "127.0.0.1"
        return host, host
    return "127.0.0.1", "127.0.0.1"


def is_ip(value: str) -> bool:
    """True when ``value`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def is_loopback(value: str) -> bool:
    """True when ``value`` is a loopback IP address."""
    return is_ip(value) and ipaddress.ip_address(value).is_loopback


async def pull_image(docker: aiodocker.Docker, image: str, progress: Progress | None) -> None:
    """Pull ``image``, reporting progress at most twice a second; ``ImageNotFound`` when that fails."""
    last = 0.0
    try:
        with metrics.docker_call("pull"):
            async for item in docker.images.pull(image, stream=True):
                now = time.monotonic()
                if progress and now - last >= 0.5:
                    last = now
                    await progress(
                        "pull",
                        {
                            "image": image,
                            "status": item.get("status", ""),
                            "layer": item.get("id", ""),
                            "detail": item.get("progressDetail", {}),
                        },
                    )
    except DockerError as exc:
        raise ImageNotFound(f"image {image} is not on this Docker host and pulling it failed: {exc.message}") from exc
    if progress:
        await progress("pull", {"image": image, "status": "done"})


def missing_image(image: str, pull: bool) -> str:
    if pull:
        return f"image {image} is not on this Docker host and could not be pulled"
    return (
        f"image {image} is not on this Docker host (pulling is off: run `docker pull {image}` there, "
        "or set CODEHUB_PULL_IMAGES=true)"
    )


def state_of(info: dict[str, Any]) -> RuntimeState:
    state = info.get("State") or {}
    labels = (info.get("Config") or {}).get("Labels") or {}
    running = bool(state.get("Running"))
    return RuntimeState(
        workspace_id=labels.get(LABEL_WORKSPACE, ""),
        container_id=info["Id"],
        running=running,
        status=state.get("Status", ""),
        exit_code=None if running else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=engine_time(state.get("StartedAt")),
        finished_at=engine_time(state.get("FinishedAt")),
        hub_id=labels.get(LABEL_HUB, ""),
        owner=labels.get(LABEL_OWNER, ""),
    )


def engine_time(value: str | None) -> str | None:
    if not value or value.startswith("0001-"):
        return None
    return iso_from_unix(unix_from_iso(value))


def log_line(line: str) -> LogLine:
    stamp, _, text = line.partition(" ")
    try:
        return LogLine(iso_from_unix(unix_from_iso(stamp)), text.rstrip("\r"))
    except ValueError:
        return LogLine("", line.rstrip("\r"))


def resource_status(sample: dict[str, Any]) -> ResourceStatus:
    cpu, pre = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [1])
    percent = cpu_delta / system_delta * online * 100 if system_delta > 0 and cpu_delta > 0 else 0.0
    memory = sample.get("memory_stats") or {}
    details = memory.get("stats") or {}
    inactive = details.get("inactive_file", details.get("total_inactive_file", 0))
    return ResourceStatus(
        cpu_percent=round(percent, 2),
        memory_used_bytes=max(0, memory.get("usage", 0) - inactive),
        memory_limit_bytes=memory.get("limit", 0),
        pids=(sample.get("pids_stats") or {}).get("current", 0),
        sampled_at=iso_from_unix(unix_from_iso(sample["read"])) if sample.get("read") else "",
    )


def _listed(item: aiodocker.containers.DockerContainer, key: str, default: Any) -> Any:
    # A listed container exposes its fields through ``[]`` only (no ``get``).
    try:
        return item[key]
    except KeyError:
        return default


def state_of_list_item(item: aiodocker.containers.DockerContainer) -> RuntimeState:
    """A runtime state from one item of the container list (exit code parsed from its status text); a pod's
    container gets no workspace id."""
    labels = _listed(item, "Labels", None) or {}
    if KUBELET_POD in labels:
        labels = {key: value for key, value in labels.items() if key != LABEL_WORKSPACE}
    state = _listed(item, "State", "")
    match = _EXITED.search(_listed(item, "Status", ""))
    return RuntimeState(
        workspace_id=labels.get(LABEL_WORKSPACE, ""),
        container_id=item["Id"],
        running=state == "running",
        status=state,
        exit_code=int(match.group(1)) if match else None,
        hub_id=labels.get(LABEL_HUB, ""),
        owner=labels.get(LABEL_OWNER, ""),
    )
