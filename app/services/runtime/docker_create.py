"""Creating a workspace's container on a Docker engine: the image's password override and project wrapper, the
create call with its retries (a leftover container, a network removed meanwhile, an image to pull), and image
lookups.

The project wrapper: a container whose working directory is the project makes it (Docker 20.10, at create,
owned by root) and copies it into the new home volume with the image's home. Handing it to the workspace user
through the engine's archive API costs a re-exec of the engine's binary (110-180 ms on 2 cores, 300 ms in a
burst of starts). Instead the container's user does it at no cost as its first act: ``sh -c PROJECT_SCRIPT``
replaces the empty root-owned directory by its own (its parent, the home, is the user's when the image's home
is), then execs the IDE's own entrypoint and command. When it cannot (no ``sh`` in the image, a home the user
cannot write), the start falls back to the archive for that image (``WrapperUnusable``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from app import metrics
from app.services.runtime import docker_network as dn
from app.services.runtime import docker_support as ds
from app.services.runtime.base import ImageNotFound, Progress, StartFailed, WorkspaceSpec, container_name
from app.services.runtime.ide_secret import password_auth_overrides, require_password_auth

Config = Callable[[WorkspaceSpec, str, str], dict[str, Any]]
"""The create body of a workspace on a network, publishing on an address."""
PROJECT_UNWRITABLE = 86
"""The wrapper's exit code when it cannot make the project directory its user's."""
PROJECT_SCRIPT = (
    f'[ -O "$0" ] || {{ rmdir -- "$0" && mkdir -- "$0" && cd -- "$0"; }} || exit {PROJECT_UNWRITABLE}; exec "$@"'
)
"""Run as ``sh -c PROJECT_SCRIPT <project> <entrypoint> <cmd>`` in the project (the working directory)."""


class WrapperUnusable(Exception):
    """The project wrapper could not run in this image or could not hand the project to the user."""


def wrapped(overrides: dict[str, list[str]]) -> bool:
    """True when ``overrides`` run the IDE through the project wrapper."""
    return overrides.get("Entrypoint", [])[:3] == ["sh", "-c", PROJECT_SCRIPT]


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


async def launch_overrides(
    docker: aiodocker.Docker, docker_url: str, spec: WorkspaceSpec, *, project: str | None
) -> dict[str, list[str]]:
    """Entrypoint/Cmd overrides: an image's ``--auth none`` IDE requires the start's secret instead, and with
    ``project`` (the working directory, in the home volume) the IDE runs through the project wrapper."""
    if spec.ide_secret is None and project is None:
        return {}
    try:
        with ds.engine_errors(docker_url), metrics.docker_call("image_inspect"):
            config = (await docker.images.inspect(spec.image)).get("Config") or {}
    except DockerError as exc:
        if exc.status == 404:
            return {}  # not pulled yet: the create fails, pulls, and the next attempt asks again
        raise
    entrypoint, cmd = list(config.get("Entrypoint") or []), list(spec.command) or list(config.get("Cmd") or [])
    if project is None or not (entrypoint or cmd):
        return password_auth_overrides(entrypoint, cmd) if spec.ide_secret is not None else {}
    argv = require_password_auth([*entrypoint, *cmd]) if spec.ide_secret is not None else [*entrypoint, *cmd]
    split = len(entrypoint)
    return {"Entrypoint": ["sh", "-c", PROJECT_SCRIPT, project, *argv[:split]], "Cmd": argv[split:]}


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
    overrides: dict[str, list[str]],
    project: str | None,
) -> tuple[Any, bool]:
    """Create the workspace's container (not started) with ``overrides`` (``launch_overrides``); a leftover of
    the same name is removed, a network removed meanwhile made again, a missing image pulled when ``pull``.
    The container, and whether it runs through the project wrapper."""
    name = container_name(spec.id)
    publish_ip = await dn.publish_ip(publish_host)
    for attempt in range(3):
        network = await networks.ensure(docker, spec.hub_id)
        if attempt:  # the image may have been pulled since
            overrides = await launch_overrides(docker, docker_url, spec, project=project)
        body = {**config(spec, network, publish_ip), **overrides}
        try:
            with metrics.docker_call("create"):
                return await docker.containers.create(body, name=name), wrapped(overrides)
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


__all__ = [
    "PROJECT_SCRIPT",
    "PROJECT_UNWRITABLE",
    "Config",
    "WrapperUnusable",
    "create_container",
    "image_exists",
    "launch_overrides",
    "wrapped",
]
