"""Workspace networks of the Docker runtime: no workspace reaches another, egress open or none.

Every workspace container joins one bridge per hub and egress policy, ``codehub-<hub id>-egress-<policy>``,
created on first use with inter-container traffic off (``com.docker.network.bridge.enable_icc=false``) and
labelled ``codehub.hub=<hub id>``; it outlives the workspaces. ``none`` makes it ``internal``: Docker routes
nothing from it beyond the engine's host and ignores published ports there, so the hub dials the container's
address on that bridge instead, which only works from the engine's host. docs/isolation.md has the
measurements behind one shared bridge (rather than a network per workspace) and what each layer blocks.
"""

from __future__ import annotations

import socket
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError

from app.services.runtime.base import LABEL_HUB, Endpoint, StartFailed, WorkspaceNotRunning
from app.services.runtime.docker_support import is_ip
from app.settings import WorkspaceEgress

ICC_OPTION = "com.docker.network.bridge.enable_icc"


def network_name(hub_id: str, egress: WorkspaceEgress) -> str:
    """Name of the hub's workspace network for an egress policy."""
    return f"codehub-{hub_id}-egress-{egress}"


def network_body(hub_id: str, egress: WorkspaceEgress) -> dict[str, Any]:
    """The engine's create-network body of that network."""
    return {
        "Name": network_name(hub_id, egress),
        "Driver": "bridge",
        "CheckDuplicate": True,
        "Internal": egress == "none",
        "Labels": {LABEL_HUB: hub_id},
        "Options": {ICC_OPTION: "false"},
    }


def network_problem(info: dict[str, Any], egress: WorkspaceEgress) -> str | None:
    """Why an existing network of that name cannot hold the hub's workspaces, or None when it can."""
    if info.get("Driver") != "bridge":
        return f"it uses the {info.get('Driver')} driver, not bridge"
    if (info.get("Options") or {}).get(ICC_OPTION) != "false":
        return f"inter-container traffic is on ({ICC_OPTION} is not false)"
    if bool(info.get("Internal")) != (egress == "none"):
        return "it is internal" if info.get("Internal") else "it is not internal (egress none needs no route out)"
    return None


class WorkspaceNetworks:
    """The hub's workspace networks on one engine: created or checked once, then remembered."""

    def __init__(self, egress: WorkspaceEgress) -> None:
        self.egress = egress
        self._ready: set[str] = set()
        self._lock = anyio.Lock()

    async def ensure(self, docker: aiodocker.Docker, hub_id: str) -> str:
        """The network's name, after creating it or checking that the existing one isolates workspaces."""
        name = network_name(hub_id, self.egress)
        if name in self._ready:
            return name
        async with self._lock:
            if name in self._ready:
                return name
            info = await self._show(docker, name)
            if info is None:
                try:
                    await docker.networks.create(network_body(hub_id, self.egress))
                except DockerError as exc:
                    if exc.status != 409:
                        raise StartFailed(f"Docker could not create the network {name}: {exc.message}") from exc
                info = await self._show(docker, name)
            problem = "it vanished while being created" if info is None else network_problem(info, self.egress)
            if problem:
                raise StartFailed(f"network {name} cannot isolate workspaces: {problem}; remove it and start again")
            self._ready.add(name)
            return name

    def forget(self, name: str) -> None:
        """Check (and create) ``name`` again on next use: it was removed behind the hub's back."""
        self._ready.discard(name)

    @staticmethod
    async def _show(docker: aiodocker.Docker, name: str) -> dict[str, Any] | None:
        try:
            return await (await docker.networks.get(name)).show()
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise


def ide_endpoint(info: dict[str, Any], ide_port: int, published_on: str, on_engine_host: bool) -> Endpoint:
    """Where the hub dials a container's IDE: its published port, or (internal network) its bridge address."""
    settings = info.get("NetworkSettings") or {}
    bindings = (settings.get("Ports") or {}).get(f"{ide_port}/tcp") or []
    if bindings:
        return Endpoint(published_on, int(bindings[0]["HostPort"]), info["Id"])
    mode = (info.get("HostConfig") or {}).get("NetworkMode", "")
    address = ((settings.get("Networks") or {}).get(mode) or {}).get("IPAddress")
    if address and on_engine_host:
        return Endpoint(address, ide_port, info["Id"])
    raise WorkspaceNotRunning(f"container {info.get('Name', '')} publishes no IDE port")


async def publish_ip(host: str) -> str:
    """The IP address to publish the IDE port on for ``host``: a name is resolved (IPv4 first, as Docker's
    bridges are), never replaced by every address."""
    if is_ip(host):
        return host
    try:
        found = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise StartFailed(f"cannot resolve {host} to publish the IDE port on: {exc}") from exc
    addresses = [str(item[4][0]) for item in found]
    return next((address for address in addresses if ":" not in address), addresses[0])
