"""Fixtures for runtime tests: unique hub ids whose containers are removed at the end, the fake IDE."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services.runtime.base import WorkspaceSpec
from tests.services import TEST_IMAGE

FAKE_IDE = Path(__file__).resolve().parent.parent / "support" / "fake_ide.py"


def fake_ide_command() -> str:
    """``local_ide_command`` that runs the fake IDE with this venv's Python."""
    return f"{sys.executable} {FAKE_IDE} --port {{port}} {{dir}}"


def remove_hub_containers(hub_id: str) -> None:
    """Force-remove every container labelled with this (test-unique) hub id, then its networks."""
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=codehub.hub={hub_id}"], capture_output=True, text=True
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"label=codehub.hub={hub_id}"], capture_output=True, text=True
    )
    if networks.stdout.split():
        subprocess.run(["docker", "network", "rm", *networks.stdout.split()], capture_output=True)


@pytest.fixture(scope="module")
def hub_id() -> Iterator[str]:
    """A hub id no one else uses; its containers are removed when the module ends."""
    value = f"t-rt-{secrets.token_hex(4)}"
    yield value
    remove_hub_containers(value)


def new_workspace_id() -> str:
    """A fresh workspace id (lowercase letters and digits, starts with a letter)."""
    return "w" + secrets.token_hex(5)


def make_spec(hub_id: str, tmp: Path, **overrides: object) -> WorkspaceSpec:
    """A small workspace of the test image."""
    values: dict[str, object] = {
        "id": new_workspace_id(),
        "owner": "7",
        "image": TEST_IMAGE,
        "hub_id": hub_id,
        "workspace_dir": str(tmp / "ws"),
        "mount": "/workspace",
        "cpu": 0.5,
        "memory_mb": 256,
        "pids_limit": 128,
        "env": {"FOO": "bar"},
    }
    values.update(overrides)
    return WorkspaceSpec(**values)  # type: ignore[arg-type]
