"""Runtime kinds by name, as JupyterHub picks a ``spawner_class``: each runtime module registers its kind.

A kind that runs ``on_servers`` gets one runtime per registered server (its factory is given the ``Server``
row); any other kind gets one runtime for the whole hub process. ``Engines`` builds, opens and chooses them;
nothing above the runtime package names a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.errors import ServiceUnavailable
from app.models import Server
from app.services.runtime.base import WorkspaceRuntime
from app.services.runtime.cache import StatusCache
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What a factory builds a runtime from; ``server`` is set for kinds that run on servers."""

    settings: Settings
    cache: StatusCache
    server: Server | None = None


RuntimeFactory = Callable[[RuntimeOptions], WorkspaceRuntime]


def _always(_settings: Settings) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """A registered kind: how to build its runtime and whether workspaces of it are placed on servers."""

    kind: str
    factory: RuntimeFactory
    on_servers: bool
    enabled: Callable[[Settings], bool] = _always
    """For a hub-wide kind: whether these settings open it (a kind that needs configuration opens only with it)."""


_ENTRIES: dict[str, RuntimeEntry] = {}


def register_runtime(
    kind: str, factory: RuntimeFactory, *, on_servers: bool = False, enabled: Callable[[Settings], bool] = _always
) -> None:
    """Make ``kind`` available; registering a kind again replaces its entry (tests swap in fakes)."""
    _ENTRIES[str(kind)] = RuntimeEntry(str(kind), factory, on_servers, enabled)


def runtime_entry(kind: str) -> RuntimeEntry:
    """The entry of ``kind`` (503 ``unknown_runtime`` when nothing registered it)."""
    entry = _ENTRIES.get(kind)
    if entry is None:
        raise ServiceUnavailable(f"no runtime of kind {kind!r} is registered", code="unknown_runtime")
    return entry


def registered_runtimes() -> list[RuntimeEntry]:
    """Every registered kind, in registration order."""
    return list(_ENTRIES.values())
