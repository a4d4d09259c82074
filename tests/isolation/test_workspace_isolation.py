"""From inside one workspace, attack another: its container address, its name, its published port through
the gateway. Egress open (the default), on the local engine (ports published on loopback) and shaped like a
remote engine (ports published on a non-loopback address of this machine, the server's ``public_host``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.services.runtime.base import Endpoint
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.docker_network import ICC_OPTION, network_name
from tests.support.probes import container_info, host_address, network_of, probe, reached, userland_proxy_serves
from tests.support.runtime import Started, running_pair
from tests.support.services import TEST_IMAGE, need_docker

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def local_pair(
    hub_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[DockerRuntime, Started, Started]]:
    """Alice's and Bob's workspaces on the local engine."""
    async with (
        DockerRuntime(need_docker(TEST_IMAGE)) as runtime,
        running_pair(runtime, hub_id, tmp_path_factory) as (alice, bob),
    ):
        yield runtime, alice, bob


@pytest.fixture(scope="module")
async def remote_pair(
    hub_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[DockerRuntime, str, Started, Started]]:
    """Carol's and Dave's workspaces published like a remote engine's: on a non-loopback host address."""
    url = need_docker(TEST_IMAGE)
    address = host_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address outside Docker's bridges")
    async with (
        DockerRuntime(url, public_host=address) as runtime,
        running_pair(runtime, hub_id, tmp_path_factory) as (carol, dave),
    ):
        yield runtime, address, carol, dave


async def answers(endpoint: Endpoint) -> bool:
    """True when the IDE answers the hub at ``endpoint``."""
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        return (await client.get(f"{endpoint.url}/healthz")).text.strip() == "ok"


async def test_workspaces_join_the_hub_network_with_inter_container_traffic_off(local_pair, hub_id: str) -> None:
    runtime, (_, alice), (_, bob) = local_pair
    name = network_name(hub_id, "open")
    network = await (await runtime.docker.networks.get(name)).show()
    assert network["Driver"] == "bridge" and network["Internal"] is False
    assert network["Options"][ICC_OPTION] == "false"
    assert network["Labels"] == {"codehub.hub": hub_id}
    for endpoint in (alice, bob):
        info = await container_info(runtime, endpoint.container_id)
        assert info["HostConfig"]["NetworkMode"] == name
        assert network_of(info)["NetworkID"] == network["Id"]
        assert info["HostConfig"]["PortBindings"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]


async def test_the_hub_reaches_both_ides_and_a_workspace_reaches_itself(local_pair) -> None:
    runtime, (alice_spec, alice), (_, bob) = local_pair
    assert alice.host == bob.host == "127.0.0.1"
    assert await answers(alice) and await answers(bob)
    own = network_of(await container_info(runtime, alice.container_id))["IPAddress"]
    assert reached(await probe(runtime, alice_spec.id, own, 8080)), "the probe itself must work (control)"


async def test_a_workspace_cannot_reach_another_by_address_or_name(local_pair) -> None:
    runtime, (alice_spec, _), (bob_spec, bob) = local_pair
    bob_address = network_of(await container_info(runtime, bob.container_id))["IPAddress"]
    assert not reached(await probe(runtime, alice_spec.id, bob_address, 8080))
    assert not reached(await probe(runtime, alice_spec.id, bob_spec.container_name, 8080))


async def test_a_workspace_cannot_reach_another_through_the_gateway(local_pair) -> None:
    runtime, (alice_spec, alice), (_, bob) = local_pair
    gateway = network_of(await container_info(runtime, alice.container_id))["Gateway"]
    assert not reached(await probe(runtime, alice_spec.id, gateway, bob.port))
    assert not reached(await probe(runtime, alice_spec.id, "127.0.0.1", bob.port))


async def test_a_remote_engine_publishes_on_the_public_host_only(remote_pair) -> None:
    runtime, address, (_, carol), (_, dave) = remote_pair
    for endpoint in (carol, dave):
        assert endpoint.host == address
        info = await container_info(runtime, endpoint.container_id)
        assert info["HostConfig"]["PortBindings"]["8080/tcp"] == [{"HostIp": address, "HostPort": ""}]
        assert await answers(endpoint)


async def test_a_remote_published_port_is_closed_to_other_workspaces_only_without_the_userland_proxy(
    remote_pair,
) -> None:
    """What holds for ports published on a host address (docs/isolation.md): the container address is
    closed, and the published port is closed unless the engine's userland proxy listens on it — that proxy
    accepts connections from every bridge, so remote engines must run with ``"userland-proxy": false``."""
    runtime, address, (carol_spec, carol), (_, dave) = remote_pair
    dave_address = network_of(await container_info(runtime, dave.container_id))["IPAddress"]
    assert not reached(await probe(runtime, carol_spec.id, dave_address, 8080))
    gateway = network_of(await container_info(runtime, carol.container_id))["Gateway"]
    assert not reached(await probe(runtime, carol_spec.id, gateway, dave.port))
    proxied = userland_proxy_serves(dave.port)
    assert reached(await probe(runtime, carol_spec.id, address, dave.port)) == proxied
