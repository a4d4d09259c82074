"""Creating a workspace's container on a Docker engine: the image's password override, the create call with
its retries (a leftover container, a network removed meanwhile, an image to pull), and image lookups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from app import metrics
from app.services.runtime import docker_network as dn
from app.services.runtime import docker_support as ds
from app.services.runtime.base import ImageNotFound, Progress, StartFailed, WorkspaceSpec, container_name
from app.services.runtime.ide_secret import password_auth_overrides

Config = Callable[[WorkspaceSpec, str, str], dict[str, Any]]
"""The create body of a workspace on a network, publishing on an address."""


async def image_exists(docker: aiodocker.Docker, docker_url: str, image: str) -> bool:
    """True when ``image`` is on the engine (an image inspect; nothing is pulled)."""
    try:
        with ds.engine_errors(docker_url), metrics.docker_call("image_inspect"):
            await docker.images.inspect(image)
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def password_auth(docker: aiodocker.Docker, docker_url: str, spec: WorkspaceSpec) -> dict[str, list[str]]:
    """Entrypoint/Cmd overrides so an image's ``--auth none`` IDE requires the start's secret instead."""
    if spec.ide_secret is None:
        return {}
    try:
        with ds.engine_errors(docker_url), metrics.docker_call("image_inspect"):
            config = (await docker.images.inspect(spec.image)).get("Config") or {}
    except DockerError as exc:
        if exc.status == 404:
            return {}  # not pulled yet: the create fails, pulls, and the next attempt asks again
        raise
    return password_auth_overrides(config.get("Entrypoint") or [], list(spec.command) or config.get("Cmd") or [])


async def create_container(
    docker: aiodocker.Docker,
    docker_url: str,
    spec: WorkspaceSpec,
    *,
    networks: dn.WorkspaceNetworks,
    publish_host: str,
    pull: bool,
    config: Config,
    remove: Callable[[str], Awaitable[None]],
    progress: Progress | None,
    auth: dict[str, list[str]],
) -> Any:
    """Create the workspace's container (not started): a leftover of the same name is removed, a network
    removed meanwhile made again, a missing image pulled when ``pull``."""
    name = container_name(spec.id)
    publish_ip = await dn.publish_ip(publish_host)
    for attempt in range(3):
        network = await networks.ensure(docker, spec.hub_id)
        if attempt:
            auth = await password_auth(docker, docker_url, spec)  # the image may have been pulled since
        body = {**config(spec, network, publish_ip), **auth}
        try:
            with metrics.docker_call("create"):
                return await docker.containers.create(body, name=name)
        except DockerError as exc:
            if exc.status == 409 and attempt < 2:
                await remove(name)
                continue
            if exc.status == 404 and network in exc.message and attempt < 2:
                networks.forget(network)
                continue
            if exc.status == 404 and "image" in exc.message.lower():
                if not pull or attempt:
                    raise ImageNotFound(ds.missing_image(spec.image, pull)) from exc
                await ds.pull_image(docker, spec.image, progress)
                continue
            raise StartFailed(f"Docker refused to create the container: {exc.message}") from exc
    raise StartFailed(f"container name {name} stays taken")


__all__ = ["Config", "create_container", "image_exists", "password_auth"]
