"""What creating and deleting a workspace does beyond its record: its server, its first clone, its container."""

from __future__ import annotations

from app.models import Workspace
from app.services.auth.access import Principal
from app.services.runtime.engines import Engines
from app.services.workspaces.lifecycle import Lifecycle
from app.services.workspaces.servers import ServerService


class Provisioning:
    """The runtime's part in creating and deleting workspaces (the record itself is ``WorkspaceService``'s)."""

    def __init__(self, engines: Engines, servers: ServerService, lifecycle: Lifecycle) -> None:
        self._engines = engines
        self._servers = servers
        self._lifecycle = lifecycle

    async def place_new(
        self, server_id: str | None, labels: dict[str, str] | None = None, *, for_user: int | None = None
    ) -> str | None:
        """The server a new workspace goes to, chosen before its row exists.

        The one asked for (checked), else the least loaded when new workspaces run on servers (among those
        with ``labels`` and, with ``for_user``, whose group limit lets that user in); None for a hub-wide
        runtime (local processes).
        """
        if server_id is not None or self._engines.new_workspaces_need_server():
            return await self._servers.choose(server_id, labels, for_user=for_user)
        return None

    async def after_create(self, ws: Workspace, clone_url: str | None) -> Workspace:
        """Announce where the new workspace was placed and start cloning its repository (in the background)."""
        if ws.server_id is not None:
            await self._lifecycle.publish(ws, "workspace.placed", server_id=ws.server_id)
        if ws.git_url:
            ws = await self._lifecycle.clone_at_create(ws, clone_url or ws.git_url)
        return ws

    async def delete(self, principal: Principal, workspace_id: str, *, purge: bool = False) -> Workspace:
        """Remove the container (and with ``purge`` the files), then the row."""
        return await self._lifecycle.delete(principal, workspace_id, purge=purge)
