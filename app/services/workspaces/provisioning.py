"""What creating and deleting a workspace does beyond its record: its server, its first clone, its container."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import Conflict
from app.models import Workspace, WorkspaceState
from app.services.auth.access import Principal
from app.services.runtime.engines import Engines
from app.services.workspaces.lifecycle import CLONING, Lifecycle
from app.services.workspaces.records import check_git_url, split_git_credentials
from app.services.workspaces.servers import ServerService
from app.settings import Settings

# A repository can change while nothing runs and before its files hold a clone (a failed or skipped clone).
REPOSITORY_EDITABLE = (WorkspaceState.CREATED, WorkspaceState.STOPPED, WorkspaceState.FAILED)


@dataclass(frozen=True, slots=True)
class RepositoryChange:
    """A checked new repository: the URL to store and show, the one to clone with (memory only), the ref."""

    stored_url: str
    clone_url: str
    ref: str | None


class Provisioning:
    """The runtime's part in creating and deleting workspaces (the record itself is ``WorkspaceService``'s)."""

    def __init__(self, engines: Engines, servers: ServerService, lifecycle: Lifecycle) -> None:
        self._settings: Settings = lifecycle.settings
        self._engines = engines
        self._servers = servers
        self._lifecycle = lifecycle

    async def place_new(
        self,
        server_id: str | None,
        labels: dict[str, str] | None = None,
        *,
        for_user: int | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
    ) -> str | None:
        """The server a new workspace goes to, chosen before its row exists.

        The one asked for (checked), else the least loaded with room for ``cpu`` and ``memory_mb`` when new
        workspaces run on servers (among those with ``labels`` and, with ``for_user``, whose group limit lets
        that user in); None for a hub-wide runtime (local processes).
        """
        if server_id is not None or self._engines.new_workspaces_need_server():
            return await self._servers.choose(server_id, labels, for_user=for_user, cpu=cpu, memory_mb=memory_mb)
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

    async def check_repository_change(
        self, principal: Principal, ws: Workspace, git_url: str | None, git_ref: str | None
    ) -> RepositoryChange:
        """Refuse a repository change (before anything is written) unless the workspace is not running, not
        cloning, and its files hold no clone yet; the URL is checked as at create."""
        url = git_url if git_url is not None else ws.git_url
        if not url:
            raise Conflict("the workspace has no repository: give git_url with git_ref", code="no_repository")
        check_git_url(url, allow_file=self._settings.allow_file_git_urls and principal.is_admin)
        if ws.state not in REPOSITORY_EDITABLE:
            raise Conflict(
                f"the workspace is {ws.state}: stop it before changing its repository",
                code="workspace_busy",
                state=ws.state,
            )
        if ws.state_reason == CLONING:
            raise Conflict("the workspace is still cloning its repository", code="workspace_cloning")
        if not await (await self._lifecycle.storage_for(ws)).is_empty():
            raise Conflict(
                "the workspace's files already hold a clone: change its remote inside the workspace "
                "(git remote set-url), or delete the workspace with its files and create it again",
                code="already_cloned",
            )
        stored_url, clone_url = split_git_credentials(url)
        return RepositoryChange(stored_url, clone_url, git_ref if git_ref is not None else ws.git_ref)

    async def change_repository(self, ws: Workspace, change: RepositoryChange) -> Workspace:
        """Point ``ws`` at the checked repository and clone it now in the background (a failed workspace
        becomes ``created`` again: its failure was the old repository)."""
        state = WorkspaceState.CREATED if ws.state == WorkspaceState.FAILED else ws.state
        row = await self._lifecycle.cas(
            ws.id,
            (ws.state,),
            not_cloning=True,
            git_url=change.stored_url,
            git_ref=change.ref,
            state=state,
            state_reason=None,
        )
        if row is None:
            current = await self._lifecycle.row(ws.id)
            raise Conflict(f"the workspace is {current.state}", code="workspace_busy", state=current.state)
        await self._lifecycle.publish(row, "workspace.updated")
        return await self._lifecycle.clone_at_create(row, change.clone_url)
