"""A workspace pod's output through ``pods/log``: the last lines, and lines as the IDE writes them."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from app.services.runtime.base import LogLine, UnknownWorkspace, container_name
from app.services.runtime.kubernetes import manifests, states
from app.services.runtime.kubernetes.connection import KubeConnection, KubeError


def _params(tail: int, since: float | None, follow: bool) -> dict[str, str]:
    params = {"timestamps": "true", "tailLines": str(tail), "container": manifests.IDE_CONTAINER}
    if since is not None:
        params["sinceSeconds"] = str(states.since_seconds(since))
    if follow:
        params["follow"] = "true"
    return params


async def read(conn: KubeConnection, workspace_id: str, *, tail: int, since: float | None) -> list[LogLine]:
    """The last ``tail`` lines (after ``since``, a UNIX time); [] before the container started."""
    path = conn.path("pods", container_name(workspace_id)) + "/log"
    try:
        text = await conn.text(path, params=_params(tail, since, False))
    except KubeError as exc:
        if exc.api_status == 404:
            raise UnknownWorkspace(f"no pod for workspace {workspace_id}") from exc
        if exc.api_status == 400:  # the container has not started yet
            return []
        raise
    lines = [states.log_line(line) for line in text.splitlines() if line]
    return [line for line in lines if since is None or states.unix_of(line.at) > since]


async def follow(
    conn: KubeConnection, workspace_id: str, *, tail: int, since: float | None
) -> AsyncGenerator[LogLine, None]:
    """Lines as the IDE writes them (``follow=true``); ends when the container ends."""
    path = conn.path("pods", container_name(workspace_id)) + "/log"
    try:
        async with conn.stream(path, params=_params(tail, since, True)) as response:
            async for raw in response.aiter_lines():
                if raw:
                    line = states.log_line(raw)
                    if since is None or states.unix_of(line.at) > since:
                        yield line
    except KubeError as exc:
        if exc.api_status == 404:
            raise UnknownWorkspace(f"no pod for workspace {workspace_id}") from exc
        raise
