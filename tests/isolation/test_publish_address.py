"""Where the IDE port is published and whether an existing network may hold workspaces (no engine needed)."""

from __future__ import annotations

import ipaddress

import pytest

from app.services.runtime.docker_network import ICC_OPTION, network_body, network_problem, publish_ip
from app.services.runtime.docker_support import publish_address

pytestmark = pytest.mark.anyio


def test_the_publish_address_is_loopback_or_the_address_the_hub_dials() -> None:
    assert publish_address("unix:///var/run/docker.sock", None) == ("127.0.0.1", "127.0.0.1")
    assert publish_address("tcp://10.0.0.12:2376", None) == ("10.0.0.12", "10.0.0.12")
    assert publish_address("tcp://engine.internal:2376", None) == ("engine.internal", "engine.internal")
    assert publish_address("tcp://10.0.0.12:2376", "ide.internal") == ("ide.internal", "ide.internal")


async def test_a_host_name_is_published_on_its_address_never_on_every_address() -> None:
    assert await publish_ip("10.0.0.12") == "10.0.0.12"
    resolved = await publish_ip("localhost")
    assert ipaddress.ip_address(resolved).is_loopback


def test_an_existing_network_must_isolate() -> None:
    good = {"Driver": "bridge", "Options": {ICC_OPTION: "false"}, "Internal": False}
    assert network_problem(good, "open") is None
    assert "inter-container" in (network_problem({**good, "Options": {}}, "open") or "")
    assert "not internal" in (network_problem(good, "none") or "")
    assert network_problem({**good, "Internal": True}, "none") is None
    assert "driver" in (network_problem({**good, "Driver": "overlay"}, "open") or "")
    body = network_body("h1", "none")
    assert body["Internal"] is True and body["Labels"] == {"codehub.hub": "h1"}
    assert network_problem(body, "none") is None, "what the hub creates passes its own check"
