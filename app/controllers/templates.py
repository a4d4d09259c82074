"""``/api/templates`` (everyone: what a workspace can be made from) and ``/api/admin/templates`` (admins:
create, list, read, change as a new version, delete or archive, versions, where the image is, pre-pull)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from app.context import AppContext
from app.controllers.deps import error_responses, requires_admin
from app.schemas import Body, ShortId
from app.services.auth.access import Principal, audit_entry
from app.services.templates.drafts import TemplateChange, TemplateDraft
from app.services.templates.images import PullStarted, ServerImage
from app.services.templates.service import TemplateView

Ref = Annotated[str, Parameter(max_length=63, description="template id or name")]


class TemplateImagesOut(msgspec.Struct):
    """A template's image and which servers hold it."""

    template_id: str
    image: str
    pull_allowed: bool
    servers: list[ServerImage]


class PullBody(Body):
    """Servers to pre-pull onto (default: every enabled server)."""

    server_ids: Annotated[list[ShortId], msgspec.Meta(max_length=100)] | None = None


class TemplatesController(Controller):
    """Templates a workspace can be made from (any signed-in user; secrets show as names only)."""

    path = "/api/templates"
    tags = ["templates"]

    @get("/", operation_id="listTemplates", responses=error_responses(401))
    async def list_templates(self, ctx: AppContext, principal: Principal) -> list[TemplateView]:
        """Templates that are not archived, at their newest versions, that the caller's groups allow."""
        return await ctx.templates.list_templates(for_user=principal.user_id)

    @get("/{ref:str}", operation_id="getTemplate", responses=error_responses(401, 404))
    async def get_template(self, ref: Ref, ctx: AppContext, principal: Principal) -> TemplateView:
        """One template at its newest version (404 when the caller's groups do not allow it)."""
        return await ctx.templates.get(ref, for_user=principal.user_id)


class AdminTemplatesController(Controller):
    """Manage templates (admins only)."""

    path = "/api/admin/templates"
    tags = ["admin"]
    guards = [requires_admin]

    @post("/", operation_id="adminCreateTemplate", responses=error_responses(400, 401, 403, 409, 422))
    async def create(
        self, request: Request[Any, Any, Any], data: TemplateDraft, ctx: AppContext, principal: Principal
    ) -> TemplateView:
        """Create a template at version 1."""
        view = await ctx.templates.create(data, by=principal.user_id)
        await ctx.audit.record(audit_entry(request.scope, "template.create", principal, target=view.name))
        return view

    @get("/", operation_id="adminListTemplates", responses=error_responses(401, 403))
    async def list_templates(
        self, ctx: AppContext, archived: Annotated[bool, Parameter(description="include archived ones")] = False
    ) -> list[TemplateView]:
        """Every template at its newest version."""
        return await ctx.templates.list_templates(archived=archived)

    @get("/{ref:str}", operation_id="adminGetTemplate", responses=error_responses(401, 403, 404))
    async def get_template(
        self, ref: Ref, ctx: AppContext, version: Annotated[int | None, Parameter(ge=1, le=1_000_000)] = None
    ) -> TemplateView:
        """A template at its newest version (or ``?version=``)."""
        return await ctx.templates.get(ref, version=version)

    @get("/{ref:str}/versions", operation_id="adminListTemplateVersions", responses=error_responses(401, 403, 404))
    async def versions(self, ref: Ref, ctx: AppContext) -> list[TemplateView]:
        """Every version, newest first."""
        return await ctx.templates.versions(ref)

    @patch("/{ref:str}", operation_id="adminUpdateTemplate", responses=error_responses(400, 401, 403, 404, 409, 422))
    async def update(
        self, request: Request[Any, Any, Any], ref: Ref, data: TemplateChange, ctx: AppContext, principal: Principal
    ) -> TemplateView:
        """Change a template: a new version unless only the name or description changes."""
        view = await ctx.templates.update(ref, data, by=principal.user_id)
        details = {
            "version": view.version,
            "secrets_set": sorted(data.secrets or {}),
            "secrets_removed": data.remove_secrets,
        }
        await ctx.audit.record(
            audit_entry(request.scope, "template.update", principal, target=view.name, details=details)
        )
        return view

    @delete(
        "/{ref:str}",
        status_code=HTTP_204_NO_CONTENT,
        operation_id="adminDeleteTemplate",
        responses=error_responses(401, 403, 404),
    )
    async def delete_template(
        self, request: Request[Any, Any, Any], ref: Ref, ctx: AppContext, principal: Principal
    ) -> None:
        """Delete a template no workspace uses, archive one in use (its workspaces keep running their version)."""
        outcome = await ctx.templates.remove(ref)
        await ctx.audit.record(audit_entry(request.scope, f"template.{outcome}", principal, target=ref))

    @get("/{ref:str}/images", operation_id="adminTemplateImages", responses=error_responses(401, 403, 404))
    async def images(self, ref: Ref, ctx: AppContext) -> TemplateImagesOut:
        """Which enabled servers hold the template's image now."""
        view = await ctx.templates.get(ref)
        servers = await ctx.template_images.where(view.image)
        return TemplateImagesOut(view.id, view.image, ctx.settings.pull_images, servers)

    @post(
        "/{ref:str}/pull",
        status_code=HTTP_202_ACCEPTED,
        operation_id="adminPullTemplateImage",
        responses=error_responses(400, 401, 403, 404, 422),
    )
    async def pull(
        self,
        request: Request[Any, Any, Any],
        ref: Ref,
        ctx: AppContext,
        principal: Principal,
        data: PullBody | None = None,
    ) -> PullStarted:
        """Pre-pull the image onto servers; progress as ``template.pull.*`` events on the ``admin`` topic."""
        view = await ctx.templates.get(ref)
        started = await ctx.template_images.pull(view.id, view.image, data.server_ids if data else None)
        await ctx.audit.record(audit_entry(request.scope, "template.pull", principal, target=view.image))
        return started
