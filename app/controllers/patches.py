"""``/api/patch``: validate a unified diff against a workspace, or apply it to every file or none.

``apply`` answers 409 ``patch_conflict`` (with the per-file checks) when the diff does not apply, and
409 ``base_mismatch`` when a given base hash is not the file's current sha256. The audit record holds
the diff's sha256 and size and each file's new sha256, never the diff.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.status_codes import HTTP_200_OK

from app.context import AppContext
from app.controllers.deps import error_responses
from app.controllers.files import safe_target, workspace_storage
from app.errors import DomainError
from app.services.auth.access import Principal, audit_entry
from app.services.files import patches
from app.services.workspaces.records import WorkspaceService

# A static ceiling for the JSON body (escaping can double a diff); the diff itself is held to
# ``max_patch_bytes`` by the service (413).
BODY_CEILING = 64 << 20
Strip = Annotated[int, msgspec.Meta(ge=0, le=16, description="leading path components to drop (git's -p)")]


class PatchValidateRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A unified diff (git or plain ``diff -u``) for a workspace."""

    workspace_id: Annotated[str, msgspec.Meta(max_length=16)]
    diff: str
    strip: Strip | None = None


class PatchApplyRequest(PatchValidateRequest, kw_only=True):
    """A diff to apply; ``base_hashes`` (path → sha256) must match the files' current contents."""

    base_hashes: dict[str, str] | None = None


class PatchController(Controller):
    """Validate or apply diffs to a workspace the caller may access (404 for anyone else's)."""

    path = "/api/patch"
    tags = ["patches"]
    request_max_body_size = BODY_CEILING

    @post(
        "/validate",
        operation_id="validatePatch",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 413),
    )
    async def validate(
        self, data: PatchValidateRequest, ctx: AppContext, principal: Principal, workspaces: WorkspaceService
    ) -> patches.ValidateResult:
        """Whether each file of the diff applies (``applies``, ``conflicts``, ``base_sha256``); writes nothing."""
        storage = await workspace_storage(ctx, await workspaces.get(principal, data.workspace_id))
        limits = patches.PatchLimits.from_settings(ctx.settings)
        return await storage.validate_patch(data.diff, limits=limits, strip=data.strip)

    @post(
        "/apply",
        operation_id="applyPatch",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 409, 413),
    )
    async def apply(
        self,
        request: Request[Any, Any, Any],
        data: PatchApplyRequest,
        ctx: AppContext,
        principal: Principal,
        workspaces: WorkspaceService,
    ) -> patches.ApplyResult:
        """Apply the diff to every file or to none; the new sha256 of each file."""
        ws = await workspaces.get(principal, data.workspace_id)
        raw = data.diff.encode("utf-8", errors="surrogatepass")
        entry = audit_entry(
            request.scope,
            "patch.apply",
            principal,
            workspace_id=ws.id,
            sha256=hashlib.sha256(raw).hexdigest(),
            size=len(raw),
            details={"base_hashes": len(data.base_hashes or {})},
        )
        limits = patches.PatchLimits.from_settings(ctx.settings)
        async with ctx.audit.recording(entry):
            try:
                storage = await workspace_storage(ctx, ws)
                result = await storage.apply_patch(data.diff, data.base_hashes, limits=limits, strip=data.strip)
            except DomainError as exc:
                if isinstance(exc.extra.get("files"), list):
                    entry.details["files"] = len(exc.extra["files"])
                raise
            touched = [f.path for f in result.files]
            several = f"{len(touched)} files: {', '.join(touched)}"
            entry.target = safe_target(touched[0] if len(touched) == 1 else several)
            entry.details["files"] = [
                {"path": safe_target(f.path, 512), "operation": f.operation, "sha256": f.sha256, "size": f.size}
                for f in result.files
            ]
        return result
