"""``CODEHUB_WORKSPACE_EGRESS=none``: workspaces on an internal network, dialled by the hub on their address.

"Outside" is a network namespace of this machine behind a veth pair (``outside_listener``): reaching it
takes the host's forwarding, exactly as reaching the internet does, and no packet leaves the machine.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from app.services.runtime.base import StartFailed
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.docker_network import ICC_OPTION, network_name
from tests.support.lifecycle import wait_state
from tests.support.probes import (
    can_build_outside,
    container_info,
    http_listener,
    network_of,
    outside_listener,
    probe,
    reached,
)
from tests.support.runtime import Started, make_spec, remove_hub_containers, running_pair
from tests.support.server import running_hub
from tests.support.services import TEST_IMAGE, need_docker
from tests.support.settings import docker_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def closed_pair(
    hub_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[DockerRuntime, Started, Started]]:
    """Erin's and Frank's workspaces with egress none."""
    async with (
        DockerRuntime(need_docker(TEST_IMAGE), egress="none") as runtime,
        running_pair(runtime, hub_id, tmp_path_factory) as (erin, frank),
    ):
        yield runtime, erin, frank


async def test_egress_none_uses_an_internal_network_and_publishes_nothing(closed_pair, hub_id: str) -> None:
    runtime, (_, erin), (frank_spec, frank) = closed_pair
    name = network_name(hub_id, "none")
    network = await (await runtime.docker.networks.get(name)).show()
    assert network["Internal"] is True and network["Options"][ICC_OPTION] == "false"
    assert network["Labels"] == {"codehub.hub": hub_id}
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        for endpoint in (erin, frank):
            info = await container_info(runtime, endpoint.container_id)
            assert info["HostConfig"]["NetworkMode"] == name and not info["HostConfig"]["PortBindings"]
            assert (endpoint.host, endpoint.port) == (network_of(info)["IPAddress"], 8080)
            assert (await client.get(f"{endpoint.url}/healthz")).text.strip() == "ok", "the hub dials the IDE"
    assert await runtime.endpoint(frank_spec.id) == frank, "a running workspace's endpoint is found again"


async def test_docker_publishes_no_port_on_an_internal_network(closed_pair, hub_id: str) -> None:
    """Why the hub dials the container's address with egress none: a port binding asked for on an internal
    network is accepted and silently left out (``NetworkSettings.Ports`` stays empty)."""
    runtime, _, _ = closed_pair
    config = {
        "Image": TEST_IMAGE,
        "Labels": {"codehub.hub": hub_id},
        "ExposedPorts": {"8080/tcp": {}},
        "HostConfig": {
            "NetworkMode": network_name(hub_id, "none"),
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
        },
    }
    container = await runtime.docker.containers.create(config, name=f"codehub-t-iso-publish-{secrets.token_hex(4)}")
    try:
        await container.start()
        info = await container.show()
        assert info["HostConfig"]["PortBindings"], "the binding was asked for"
        assert not any(info["NetworkSettings"]["Ports"].values()), "and nothing is published"
    finally:
        await container.delete(force=True)


async def test_egress_none_workspaces_cannot_reach_one_another(closed_pair) -> None:
    runtime, (erin_spec, erin), (_, frank) = closed_pair
    own = network_of(await container_info(runtime, erin.container_id))["IPAddress"]
    assert reached(await probe(runtime, erin_spec.id, own, 8080)), "the probe itself must work (control)"
    assert not reached(await probe(runtime, erin_spec.id, frank.host, 8080))


async def test_egress_none_routes_nothing_beyond_the_host(closed_pair, hub_id: str, tmp_path: Path) -> None:
    reason = can_build_outside()
    if reason:
        pytest.skip(f"no outside network namespace: {reason}")
    runtime, (erin_spec, _), _ = closed_pair
    with outside_listener() as (address, port):
        async with DockerRuntime(need_docker(TEST_IMAGE)) as open_runtime:
            spec = make_spec(hub_id, tmp_path)
            await open_runtime.start(spec, ready_timeout=30)
            try:
                assert reached(await probe(open_runtime, spec.id, address, port)), "egress open reaches it (control)"
            finally:
                await open_runtime.remove(spec.id)
        assert not reached(await probe(runtime, erin_spec.id, address, port))


async def test_egress_none_still_reaches_the_engine_host_itself(closed_pair) -> None:
    """What holds (docs/isolation.md): Docker's internal networks drop forwarded traffic only; the bridge's
    gateway is an address of the engine's host, so a host service listening there (or on every address)
    stays reachable. Host services belong on loopback, or behind the host's firewall."""
    runtime, (erin_spec, erin), _ = closed_pair
    gateway = network_of(await container_info(runtime, erin.container_id))["Gateway"]
    async with http_listener(gateway) as port:
        assert reached(await probe(runtime, erin_spec.id, gateway, port))


async def test_egress_none_is_refused_for_an_engine_on_another_machine(tmp_path: Path) -> None:
    async with DockerRuntime("tcp://docker-engine.invalid:2376", egress="none") as runtime:
        with pytest.raises(StartFailed, match="EGRESS=none needs the Docker engine on the hub's machine"):
            await runtime.start(make_spec("t-iso-remote", tmp_path))


async def test_the_hub_relays_to_an_egress_none_workspace(sqlite_url: str, tmp_path: Path) -> None:
    settings = docker_settings(
        tmp_path / "data", sqlite_url, workspace_egress="none", hub_id=f"t-iso-{secrets.token_hex(4)}"
    )
    try:
        async with running_hub(settings) as hub, hub.client() as client:
            ws = (await client.post("/api/workspaces", json={"name": "closed"})).json()["id"]
            await client.post(f"/api/workspaces/{ws}/start")
            body = await wait_state(client, ws, {"running", "failed"})
            assert body["state"] == "running", body["state_reason"]
            inspected = subprocess.run(
                ["docker", "inspect", "-f", "{{json .HostConfig.PortBindings}}", f"codehub-{ws}"],
                capture_output=True,
                text=True,
            )
            assert inspected.stdout.strip() == "{}", "nothing is published: the relay dials the container"
            with anyio.fail_after(10):
                r = await client.get(f"/w/{ws}/healthz")
            assert r.status_code == 200 and r.text.strip() == "ok"
    finally:
        remove_hub_containers(settings.hub_id)
