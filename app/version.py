"""The hub's version, as installed (``code-hub`` package metadata)."""

from __future__ import annotations

import importlib.metadata
from functools import cache


@cache
def hub_version() -> str:
    """The installed version of the hub, or ``unknown`` when run from an uninstalled tree."""
    try:
        return importlib.metadata.version("code-hub")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
