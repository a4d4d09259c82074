"""What a Docker engine tells: container logs (a tail, or followed), the event stream of this hub's containers,
and the engine's own version and round-trip time."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiodocker
import aiohttp
import anyio
from aiodocker.exceptions import DockerError

from app import metrics
from app.services.runtime import docker_support as ds
from app.services.runtime.base import (
    LABEL_HUB,
    LABEL_WORKSPACE,
    EngineInfo,
    LogLine,
    RuntimeEvent,
    UnknownWorkspace,
    container_name,
)
from app.services.runtime.cache import StatusCache
from app.services.runtime.common import iso_from_unix

LOG_TAIL_ON_FAILURE = 40


def _params(tail: int, since: float | None) -> dict[str, Any]:
    params: dict[str, Any] = {"timestamps": True, "tail": str(tail)}
    if since is not None:
        params["since"] = f"{since:.6f}"
    return params


async def tail_text(container: Any, tail: int = LOG_TAIL_ON_FAILURE) -> list[str]:
    """The last ``tail`` lines of a container's output (none when the engine refuses)."""
    try:
        with metrics.docker_call("logs"):
            chunks = await container.log(stdout=True, stderr=True, tail=tail)
    except DockerError:
        return []
    return "".join(chunks).splitlines()[-tail:]


async def logs(
    docker: aiodocker.Docker, docker_url: str, workspace_id: str, *, tail: int, since: float | None
) -> list[LogLine]:
    """The last ``tail`` lines (after ``since``) with the engine's timestamps."""
    container = docker.containers.container(container_name(workspace_id))
    with ds.engine_errors(docker_url):
        try:
            with metrics.docker_call("logs"):
                chunks = await container.log(stdout=True, stderr=True, **_params(tail, since))
        except DockerError as exc:
            if exc.status == 404:
                raise UnknownWorkspace(f"no container for workspace {workspace_id}") from exc
            raise
    return [ds.log_line(line) for line in "".join(chunks).splitlines() if line]


async def follow_logs(
    docker: aiodocker.Docker, docker_url: str, workspace_id: str, *, tail: int, since: float | None
) -> AsyncGenerator[LogLine, None]:
    """Lines as the container writes them; ends when the container stops."""
    container = docker.containers.container(container_name(workspace_id))
    buffer = ""
    with ds.engine_errors(docker_url):
        try:
            stream = container.log(stdout=True, stderr=True, follow=True, **_params(tail, since))
            async for chunk in stream:
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line:
                        yield ds.log_line(line)
        except DockerError as exc:
            if exc.status == 404:
                raise UnknownWorkspace(f"no container for workspace {workspace_id}") from exc
            raise
    if buffer:
        yield ds.log_line(buffer)


async def events(
    docker: aiodocker.Docker, docker_url: str, hub_id: str, cache: StatusCache | None
) -> AsyncIterator[RuntimeEvent]:
    """Live container events (start, die, oom, destroy, stop) of this hub's workspaces (each drops the
    workspace's cached status)."""
    filters = json.dumps(
        {
            "type": ["container"],
            "label": [f"{LABEL_HUB}={hub_id}"],
            "event": ["start", "die", "oom", "destroy", "stop"],
        }
    )
    # aiodocker's public events API feeds a queue from a task it spawns itself; one streamed query
    # keeps the reader inside the caller's cancel scope.
    with ds.engine_errors(docker_url):
        async with docker._query("events", params={"filters": filters}, timeout=aiohttp.ClientTimeout()) as response:
            while True:
                line = await response.content.readline()
                if not line:
                    return
                data = json.loads(line)
                attrs = (data.get("Actor") or {}).get("Attributes") or {}
                workspace_id = attrs.get(LABEL_WORKSPACE)
                if not workspace_id or ds.KUBELET_POD in attrs:
                    continue
                if cache is not None:
                    await cache.drop(workspace_id)
                code = attrs.get("exitCode")
                yield RuntimeEvent(
                    workspace_id=workspace_id,
                    event=data.get("Action", ""),
                    exit_code=int(code) if code is not None else None,
                    at=iso_from_unix(data.get("timeNano", 0) / 1e9),
                )


async def engine_info(docker: aiodocker.Docker) -> EngineInfo:
    """Version, API version and round-trip time of the engine (``ok=False`` with the reason when it fails)."""
    begin = time.perf_counter()
    try:
        with anyio.fail_after(10), metrics.docker_call("version"):
            version = await docker.version()
    except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        return EngineInfo(ok=False, error=str(exc) or type(exc).__name__)
    return EngineInfo(
        ok=True,
        version=str(version.get("Version", "")),
        api_version=str(version.get("ApiVersion", "")),
        latency_ms=round((time.perf_counter() - begin) * 1000, 2),
    )


__all__ = ["LOG_TAIL_ON_FAILURE", "engine_info", "events", "follow_logs", "logs", "tail_text"]
