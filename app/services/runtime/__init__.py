"""Runtimes: the engines that run workspaces, registered by kind.

Owns: ``base`` (the contract the hub calls and the structs it exchanges), ``registry`` (kind name →
factory; a new runtime registers itself there), ``engines`` (``Engines``: which runtime serves a
workspace, the default kind, placement questions), the Docker runtime (``docker*``) and the local-process
runtime (``local*``), ``ide_secret`` (the per-start secret the relay presents to the IDE), ``cache``
(resource status), ``docker_move`` (a volume moved to another engine, verified by a manifest),
``common`` (helpers both runtimes share), ``server_kinds`` (the two kinds of servers: what registering one
needs, its check, its room).
"""

__all__ = ["base", "cache", "common", "docker_move", "engines", "ide_secret", "registry", "server_kinds"]
