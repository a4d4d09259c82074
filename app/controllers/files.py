"""``/api/workspaces/{id}/files``: tree, read (text or raw, with ETag), write, delete, move.

Every mutation leaves an audit record with the path, the sha256 and size of the content, and the
outcome; never the content. The work goes through the workspace's storage (``app.services.files.storage``),
wherever its files live.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_304_NOT_MODIFIED

from app.context import AppContext
from app.controllers.deps import error_responses
from app.errors import BadRequest, PayloadTooLarge
from app.models import Workspace
from app.services import files
from app.services.auth.access import Level, Principal, audit_entry
from app.services.files.storage import WorkspaceStorage
from app.services.workspaces.records import WorkspaceService

FilePath = Annotated[str, QueryParameter(name="path", max_length=4096, description="path inside the workspace")]
DirPath = Annotated[str, QueryParameter(name="path", max_length=4096, description="directory; empty = the root")]
RAW_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "no-store",
}


class MoveRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Move or rename ``from`` to ``to`` inside the workspace."""

    from_path: Annotated[str, msgspec.Meta(max_length=4096)] = msgspec.field(name="from")
    to_path: Annotated[str, msgspec.Meta(max_length=4096)] = msgspec.field(name="to")
    overwrite: bool = False


def safe_target(text: str, limit: int = 1024) -> str:
    """A path as an audit target: control characters and lone surrogates escaped, length bounded."""
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def entity_tags(header: str | None) -> list[str]:
    """The entity tags of an ``If-Match``/``If-None-Match`` header (quotes and ``W/`` dropped)."""
    if not header:
        return []
    tags = []
    for part in header.split(","):
        tag = part.strip().removeprefix("W/").strip('"')
        if tag:
            tags.append(tag)
    return tags


async def workspace_storage(ctx: AppContext, ws: Workspace) -> WorkspaceStorage:
    """The workspace's files, created when missing (a workspace that never ran has no files yet).

    Reaching the files of a workspace counts as activity for its idle stop.
    """
    await ctx.lifecycle.touch(ws.id, "files")
    storage = await ctx.lifecycle.storage_for(ws)
    await storage.ensure()
    return storage


async def read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The raw request body, refusing more than ``limit`` bytes with 413 (early, from Content-Length)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes", code="file_too_large", limit=limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes", code="file_too_large", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


class FilesController(Controller):
    """Files of one workspace the caller may access (404 for anyone else's)."""

    path = "/api/workspaces/{workspace_id:str}/files"
    tags = ["files"]

    @get("/tree", operation_id="listFiles", responses=error_responses(400, 401, 404, 409))
    async def tree(
        self,
        workspace_id: str,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
        path: DirPath = "",
        depth: Annotated[int, Parameter(ge=1, le=64)] = 1,
        include_git: Annotated[bool, Parameter(description="also list .git")] = False,
    ) -> files.Tree:
        """Entries below ``path`` down to ``depth`` levels: directories first; cut at a cap (``truncated``)."""
        storage = await workspace_storage(ctx, await workspaces.get(principal, workspace_id, Level.VIEW))
        cap = ctx.settings.max_tree_entries
        return await storage.list_tree(path, depth, include_git=include_git, max_entries=cap)

    @get(
        "/content",
        operation_id="readFile",
        responses={
            **error_responses(400, 401, 404, 409, 413, 415),
            304: ResponseSpec(None, description="the file still has the If-None-Match version"),
        },
        response_description="the text and its sha256 (also the ETag); with raw=true the bytes",
        opt={"also_sends": {"200": "application/octet-stream"}},
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        path: FilePath,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
        raw: Annotated[bool, Parameter(description="the bytes as application/octet-stream")] = False,
    ) -> Response[Any]:
        """A UTF-8 text file as JSON (415 for binary content), or its raw bytes; 304 for a matching ETag."""
        storage = await workspace_storage(ctx, await workspaces.get(principal, workspace_id, Level.VIEW))
        limit = ctx.settings.max_file_bytes
        if raw:
            found: Any = await storage.read_raw(path, max_bytes=limit)
        else:
            found = await storage.read_text(path, max_bytes=limit)
        etag = f'"{found.sha256}"'
        if found.sha256 in entity_tags(request.headers.get("if-none-match")):
            return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        if not raw:
            return Response(found, headers={"ETag": etag})
        name = quote(Path(found.path).name)
        headers = {**RAW_HEADERS, "ETag": etag, "Content-Disposition": f"attachment; filename*=UTF-8''{name}"}
        return Response(found.data, media_type="application/octet-stream", headers=headers)

    @put(
        "/content",
        operation_id="writeFile",
        request_max_body_size=None,
        responses={
            **error_responses(400, 401, 404, 409, 412, 413),
            201: ResponseSpec(files.WriteResult, description="the file was created"),
        },
        response_description="the new sha256 (also the ETag); 201 when the file was created",
    )
    async def write(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        path: FilePath,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> Response[files.WriteResult]:
        """Write the raw body to ``path`` atomically, creating parents.

        ``If-Match: "<sha256>"`` writes only over that version (412 otherwise); ``If-None-Match: *``
        creates only. The body is bounded by the file size limit (413).
        """
        ws = await workspaces.get(principal, workspace_id, Level.USE)
        if_match = entity_tags(request.headers.get("if-match")) or None
        none_match = entity_tags(request.headers.get("if-none-match"))
        if none_match and none_match != ["*"]:
            raise BadRequest("only If-None-Match: * is supported on PUT", code="bad_request")
        limit = ctx.settings.max_file_bytes
        entry = audit_entry(request.scope, "file.write", principal, workspace_id=ws.id, target=safe_target(path))
        async with ctx.audit.recording(entry):
            data = await read_body(request, limit)
            entry.sha256, entry.size = hashlib.sha256(data).hexdigest(), len(data)
            storage = await workspace_storage(ctx, ws)
            result = await storage.write_file(
                path, data, if_match=if_match, if_none_match=bool(none_match), max_bytes=limit
            )
            entry.target = safe_target(result.path)
            entry.details = {"created": result.created, "previous_sha256": result.previous_sha256}
        status = HTTP_201_CREATED if result.created else HTTP_200_OK
        return Response(result, status_code=status, headers={"ETag": f'"{result.sha256}"'})

    @delete(
        "/content",
        operation_id="deleteFile",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 409, 412),
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        path: FilePath,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> files.DeleteResult:
        """Delete a file, a link (not its target) or an empty directory; ``If-Match`` as for PUT."""
        ws = await workspaces.get(principal, workspace_id, Level.USE)
        if_match = entity_tags(request.headers.get("if-match")) or None
        entry = audit_entry(request.scope, "file.delete", principal, workspace_id=ws.id, target=safe_target(path))
        limit = ctx.settings.max_file_bytes
        async with ctx.audit.recording(entry):
            storage = await workspace_storage(ctx, ws)
            result = await storage.delete_path(path, if_match=if_match, max_bytes=limit)
            entry.target, entry.sha256, entry.size = safe_target(result.path), result.sha256, result.size
            entry.details = {"type": result.type}
        return result

    @post(
        "/move",
        operation_id="moveFile",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 409),
    )
    async def move(
        self,
        request: Request[Any, Any, Any],
        workspace_id: str,
        data: MoveRequest,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> files.MoveResult:
        """Move or rename a file, link or directory; 409 when ``to`` exists (unless ``overwrite``)."""
        ws = await workspaces.get(principal, workspace_id, Level.USE)
        entry = audit_entry(
            request.scope,
            "file.move",
            principal,
            workspace_id=ws.id,
            target=safe_target(data.from_path),
            details={"to": safe_target(data.to_path), "overwrite": data.overwrite},
        )
        async with ctx.audit.recording(entry):
            storage = await workspace_storage(ctx, ws)
            result = await storage.move_path(data.from_path, data.to_path, overwrite=data.overwrite)
            entry.target = safe_target(result.from_path)
            entry.details = {"to": safe_target(result.to_path), "type": result.type, "overwrite": data.overwrite}
        return result
