"""Which workspace a ``Host`` names in subdomain mode (``CODEHUB_WORKSPACE_DOMAIN``).

``<id>.<domain>`` is the workspace's IDE; ``<port>--<id>.<domain>`` is a port the workspace serves; any other
name under the domain (the domain itself, deeper names, malformed labels) is a host nobody serves; names
outside the domain are the hub's. ``WorkspaceHosts.of`` answers from a dict keyed by the raw ``Host`` value,
so the check on every relayed request is one header scan and one lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

LABEL_RE = re.compile(r"(?:([0-9]{1,5})--)?([a-z0-9]{1,16})")
MAX_KNOWN_HOSTS = 10_000


@dataclass(frozen=True, slots=True)
class HostTarget:
    """A name under the workspace domain: its workspace and port (``port`` 0: the IDE; ``workspace_id`` "":
    nobody's)."""

    label: str
    workspace_id: str
    port: int = 0

    @property
    def known(self) -> bool:
        """False for a name under the domain that names no workspace."""
        return bool(self.workspace_id)


NOBODY = HostTarget("", "")


def parse_label(label: str) -> HostTarget:
    """The target of one DNS label (``abc123`` or ``8000--abc123``); ``NOBODY`` when malformed."""
    match = LABEL_RE.fullmatch(label)
    if match is None:
        return NOBODY
    port = int(match.group(1)) if match.group(1) else 0
    if match.group(1) and not 1 <= port <= 65535:
        return NOBODY
    return HostTarget(label, match.group(2), port)


class WorkspaceHosts:
    """Host names under ``domain``, and how the hub builds workspace URLs (scheme and port of ``public_url``)."""

    def __init__(self, domain: str, public_url: str) -> None:
        self.domain = domain
        self._suffix = "." + domain
        public = urlsplit(public_url)
        self.scheme = public.scheme or "https"
        self.hub_origin = f"{self.scheme}://{public.netloc}"
        self._port_part = f":{public.port}" if public.port else ""
        self._known: dict[bytes, HostTarget | None] = {}

    def of(self, scope: dict[str, Any]) -> HostTarget | None:
        """The target of the request's ``Host``, or None for a host outside the domain (the hub's)."""
        host = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        try:
            return self._known[host]
        except KeyError:
            pass
        target = self._parse(host.decode("latin-1").lower())
        if len(self._known) >= MAX_KNOWN_HOSTS:
            self._known.clear()
        self._known[host] = target
        return target

    def _parse(self, host: str) -> HostTarget | None:
        if not host.endswith("]"):
            name, sep, port = host.rpartition(":")
            if sep and port.isdigit():
                host = name
        host = host.rstrip(".")
        if host == self.domain:
            return NOBODY
        if not host.endswith(self._suffix):
            return None
        label = host[: -len(self._suffix)]
        return NOBODY if "." in label else parse_label(label)

    def origin(self, label: str) -> str:
        """The browser-facing origin of host label ``label``."""
        return f"{self.scheme}://{label}.{self.domain}{self._port_part}"
