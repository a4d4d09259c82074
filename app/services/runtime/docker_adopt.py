"""Adopting a workspace directory from before volumes (bind-mounted from ``CODEHUB_WORKSPACES_DIR``).

On the workspace's next start, a directory that still holds files is copied into the new volume's empty
project (modes, links and times kept, owned by the workspace user), then both sides are compared file by
file (sha256 of every regular file, the target of every link). Only a copy that matches exactly replaces
the directory, which is deleted then; until that moment it stays where it was. A copy that does not match
fails the start and keeps the directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import anyio

from app.services.runtime.base import StartFailed
from app.services.runtime.docker_volume import DockerVolumeFiles

log = logging.getLogger(__name__)


def has_files(directory: Path) -> bool:
    """True when ``directory`` exists and has entries."""
    try:
        with os.scandir(directory) as entries:
            return any(True for _ in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def local_manifest(directory: Path) -> set[str]:
    """``<sha256>  ./<path>`` of every regular file and ``link <target> ./<path>`` of every link."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = "./" + path.relative_to(directory).as_posix()
            if path.is_symlink():
                found.add(f"link {os.readlink(path)} {rel}")
            elif path.is_file():
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                found.add(f"{digest.hexdigest()}  {rel}")
    return found


async def adopt(files: DockerVolumeFiles, legacy: Path) -> bool:
    """Copy ``legacy`` into the volume's empty project and verify it; True when adopted (and deleted)."""
    if not await anyio.to_thread.run_sync(has_files, legacy):
        return False
    await files.ensure()
    if await files.listing((), 1, include_git=True, limit=1):
        log.warning("workspace %s has files in its volume and in %s: the directory is kept", files.workspace_id, legacy)
        return False
    await files.upload(legacy)
    code, out, _err = await files.run(["+manifest", files.project])
    remote = set(out.decode("utf-8", "surrogateescape").splitlines()) if code == 0 else set()
    local = await anyio.to_thread.run_sync(local_manifest, legacy)
    if remote != local:
        raise StartFailed(
            "the workspace's files from before volumes did not copy exactly into its volume; "
            "they are kept where they were"
        )
    await anyio.to_thread.run_sync(lambda: shutil.rmtree(legacy))
    log.info("workspace %s: %d entries adopted into its volume", files.workspace_id, len(local))
    return True
