"""Names under the workspace domain, and the settings subdomain mode needs: hostile Host values name nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings
from app.streams.relay.hosts import NOBODY, HostTarget, WorkspaceHosts


def target(hosts: WorkspaceHosts, host: str) -> HostTarget | None:
    """What ``hosts`` makes of a ``Host`` header."""
    return hosts.of({"headers": [(b"host", host.encode("latin-1"))]})


def test_names_under_the_domain() -> None:
    hosts = WorkspaceHosts("ws.example.com", "https://hub.example.com")
    assert target(hosts, "abc123.ws.example.com") == HostTarget("abc123", "abc123")
    assert target(hosts, "ABC123.WS.Example.com:443") == HostTarget("abc123", "abc123")
    assert target(hosts, "abc123.ws.example.com.") == HostTarget("abc123", "abc123")
    assert target(hosts, "8080--abc123.ws.example.com") == HostTarget("8080--abc123", "abc123", 8080)
    for nobody in (
        "ws.example.com",
        "a.abc123.ws.example.com",
        "0--abc123.ws.example.com",
        "70000--abc123.ws.example.com",
        "--abc123.ws.example.com",
        "abc_123.ws.example.com",
        "abc123-.ws.example.com",
        "x" * 17 + ".ws.example.com",
        "%61bc.ws.example.com",
    ):
        assert target(hosts, nobody) == NOBODY, nobody
    for hub in ("hub.example.com", "evilws.example.com", "ws.example.com.evil.net", "", "[::1]:8000"):
        assert target(hosts, hub) is None, hub
    assert hosts.origin("8080--abc123") == "https://8080--abc123.ws.example.com"
    assert WorkspaceHosts("ws.localhost", "http://localhost:8123").origin("a1") == "http://a1.ws.localhost:8123"


def test_no_host_header_is_the_hubs() -> None:
    hosts = WorkspaceHosts("ws.example.com", "https://hub.example.com")
    assert hosts.of({"headers": []}) is None


def test_settings_of_subdomain_mode(tmp_path: Path) -> None:
    ok = load_settings(
        environ={}, data_dir=tmp_path, workspace_domain="ws.example.com", public_url="https://hub.example.com"
    )
    assert ok.workspace_domain == "ws.example.com"
    with pytest.raises(SettingsError, match="CODEHUB_PUBLIC_URL"):
        load_settings(environ={}, data_dir=tmp_path, workspace_domain="ws.example.com")
    with pytest.raises(SettingsError, match="must not be a host under"):
        load_settings(
            environ={}, data_dir=tmp_path, workspace_domain="example.com", public_url="https://hub.example.com"
        )
    for bad in ("WS.example.com", "localhost", "*.ws.example.com", "ws..example.com", "ws.example.com:8000"):
        with pytest.raises(SettingsError, match="CODEHUB_WORKSPACE_DOMAIN"):
            load_settings(environ={}, data_dir=tmp_path, workspace_domain=bad, public_url="https://hub.example.com")
