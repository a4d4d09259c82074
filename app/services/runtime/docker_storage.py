"""The Docker runtime's storage concern: each workspace's home volume on this engine, its file helper and
channel, and the per-workspace lock of this hub process (``docker_volume`` holds the primitives)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiodocker
import anyio

from app.services.files.remote import ContentCache
from app.services.files.remote_storage import RemoteStorage
from app.services.files.storage import LocalStorage, WorkspaceStorage
from app.services.runtime.base import StorageRef, WorkspaceSpec
from app.services.runtime.common import prepare_workspace_dir
from app.services.runtime.docker_adopt import adopt
from app.services.runtime.docker_channel import HelperChannels
from app.services.runtime.docker_volume import DockerVolumeFiles, volume_name

DEFAULT_USER = (1000, 1000)  # the file helper's user when containers keep the image's own


class DockerStorage:
    """Volumes, helpers, channels and locks of one engine's workspaces (one per ``DockerRuntime``)."""

    def __init__(
        self,
        client: Callable[[], aiodocker.Docker],
        docker_url: str,
        *,
        hub_id: str,
        home: str,
        helper_image: str,
        user: tuple[int, int] | None,
        workspaces_dir: Path,
    ) -> None:
        self._client, self.docker_url = client, docker_url
        self.hub_id, self.home, self.helper_image = hub_id, home, helper_image
        self._user, self.workspaces_dir = user, workspaces_dir
        self._ready: set[str] = set()
        self.channels = HelperChannels()
        self.cache = ContentCache()
        self._locks: dict[str, anyio.Lock] = {}

    def ref(self, workspace_id: str) -> StorageRef:
        """The workspace's home volume on this engine."""
        return StorageRef(kind="volume", name=volume_name(workspace_id))

    def files(self, workspace_id: str, *, image: str = "", hub_id: str = "") -> DockerVolumeFiles:
        """The file primitives of a workspace's volume (through its helper container of ``image``)."""
        return DockerVolumeFiles(
            self._client(),
            self.docker_url,
            workspace_id=workspace_id,
            hub_id=hub_id or self.hub_id,
            image=image or self.helper_image,
            home=self.home,
            user=self._user or DEFAULT_USER,
            ready=self._ready,
            channels=self.channels,
        )

    def lock(self, workspace_id: str) -> anyio.Lock:
        """The lock this hub's file operations on the workspace hold (a move holds it too)."""
        return self._locks.setdefault(workspace_id, anyio.Lock())

    def storage(self, workspace_id: str, *, image: str = "") -> WorkspaceStorage:
        """The workspace's volume, worked on by the hub through the volume's engine."""
        return RemoteStorage(
            self.files(workspace_id, image=image), self.lock(workspace_id), cache=self.cache, scope=workspace_id
        )

    async def prepare(self, spec: WorkspaceSpec) -> None:
        """The volume exists (labelled) before the container mounts it; kept across starts."""
        if spec.storage.kind == "volume":
            await self.files(spec.id, image=spec.image, hub_id=spec.hub_id).ensure_volume()
        else:
            await anyio.to_thread.run_sync(prepare_workspace_dir, Path(spec.storage.name), self._user)

    async def prepare_project(self, spec: WorkspaceSpec, container: Any, *, owned: bool = False) -> None:
        """Give a new volume its project directory, owned by the workspace user, through the created container
        (Docker has copied the image's home into the empty volume by now); ``owned``: the container's project
        wrapper does that as it starts (``docker_create``)."""
        if spec.storage.kind == "volume":
            files = self.files(spec.id, image=spec.image, hub_id=spec.hub_id)
            if not owned:
                await files.ensure_project(container.id)
            await adopt(files, self.workspaces_dir / spec.id)  # a directory from before volumes, if any

    async def forget(self, workspace_id: str) -> None:
        """Close the workspace's channel and forget what is known of its helper (which is being removed)."""
        await self.channels.drop(workspace_id)
        self._ready.discard(workspace_id)
        self.cache.drop(workspace_id)

    async def purge(self, workspace_id: str, bound: list[Path]) -> None:
        """Remove the volume, and the hub directories ``bound`` and ``<workspaces dir>/<id>`` from before volumes."""
        await self.files(workspace_id).purge()
        self._locks.pop(workspace_id, None)
        self.cache.drop(workspace_id)
        for directory in {*bound, self.workspaces_dir / workspace_id}:
            await LocalStorage(directory).purge()


__all__ = ["DEFAULT_USER", "DockerStorage"]
