"""Templates and their versions: admin CRUD (an edit is a new version), the default template, and what a
workspace created from a template gets (its plan at create, its environment and command at start).

Secret values go in through ``TemplateDraft``/``TemplateChange``, are sealed at once (``crypto``) and come out
only in ``launch`` for a start's environment: views, events and logs carry their names alone.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from datetime import datetime

import msgspec
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionMaker
from app.errors import Conflict, DomainError, Forbidden, NotFound, Unprocessable
from app.events import ADMIN_TOPIC, EventPublisher
from app.models import Template, TemplateVersion, Workspace, new_id, utcnow
from app.services.groups.limits import admits, checked_group_ids, member_group_ids
from app.services.templates.crypto import SecretBox
from app.services.templates.drafts import (
    TemplateChange,
    TemplateDraft,
    check_command,
    check_resources,
    check_variables,
)
from app.services.workspaces.records import check_git_url
from app.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_NAME = "default"
DOTFILES_ENV = "CODEHUB_DOTFILES_URL"


class TemplateView(msgspec.Struct, kw_only=True):
    """A template at one version, as the API and the CLI show it (secret names, never values)."""

    id: str
    name: str
    description: str
    version: int
    latest_version: int
    archived: bool
    image: str
    default_cpu: float
    max_cpu: float
    default_memory_mb: int
    max_memory_mb: int
    env: dict[str, str]
    secret_names: list[str]
    command: str
    dotfiles_url: str | None
    idle_timeout: float | None
    server_labels: dict[str, str]
    allowed_groups: list[int]
    created_at: datetime
    version_created_at: datetime

    @classmethod
    def of(cls, template: Template, version: TemplateVersion) -> TemplateView:
        """Shape a template row and one of its versions."""
        return cls(
            id=template.id,
            name=template.name,
            description=template.description,
            version=version.version,
            latest_version=template.version,
            archived=template.archived,
            image=version.image,
            default_cpu=version.default_cpu,
            max_cpu=version.max_cpu,
            default_memory_mb=version.default_memory_mb,
            max_memory_mb=version.max_memory_mb,
            env=dict(version.env or {}),
            secret_names=sorted(version.secrets or {}),
            command=version.command,
            dotfiles_url=version.dotfiles_url,
            idle_timeout=version.idle_timeout,
            server_labels=dict(version.server_labels or {}),
            allowed_groups=list(template.allowed_groups or []),
            created_at=template.created_at,
            version_created_at=version.created_at,
        )


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What a workspace created from a template records: the version, its image, resources within bounds."""

    template_id: str
    template_name: str
    version: int
    image: str
    cpu: float
    memory_mb: int
    server_labels: dict[str, str]
    idle_timeout: float | None


class Launch:
    """What a start of a templated workspace adds: environment (secrets opened) and command. Never printed."""

    __slots__ = ("command", "env")

    def __init__(self, env: dict[str, str], command: tuple[str, ...]) -> None:
        self.env = env
        self.command = command

    def __repr__(self) -> str:
        return f"Launch(env=<{len(self.env)} hidden>, command=<hidden>)"

    __str__ = __repr__


class TemplateService:
    """Admin-owned, versioned templates over the database."""

    def __init__(
        self, sessionmaker: SessionMaker, settings: Settings, events: EventPublisher, box: SecretBox | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._events = events
        self._box = box or SecretBox.from_settings(settings)

    # -- reading -------------------------------------------------------------------------------------------

    async def _find(self, session: AsyncSession, ref: str) -> Template:
        row = await session.get(Template, ref) if len(ref) <= 16 else None
        if row is None and len(ref) <= 63:
            row = await session.scalar(select(Template).where(Template.name == ref))
        if row is None:
            raise NotFound(f"no template {ref!r}", code="template_not_found")
        return row

    async def _version(self, session: AsyncSession, template_id: str, version: int) -> TemplateVersion:
        row = await session.scalar(
            select(TemplateVersion).where(
                TemplateVersion.template_id == template_id, TemplateVersion.version == version
            )
        )
        if row is None:
            raise NotFound(f"template {template_id!r} has no version {version}", code="template_version_not_found")
        return row

    async def get(self, ref: str, *, version: int | None = None, for_user: int | None = None) -> TemplateView:
        """A template by id or name at its newest version (or ``version``); with ``for_user``, 404 unless that
        user may use it (its group limit)."""
        async with self._sessionmaker() as session:
            template = await self._find(session, ref)
            if for_user is not None and not admits(template.allowed_groups, await member_group_ids(session, for_user)):
                raise NotFound(f"no template {ref!r}", code="template_not_found")
            return TemplateView.of(template, await self._version(session, template.id, version or template.version))

    async def list_templates(self, *, archived: bool = False, for_user: int | None = None) -> list[TemplateView]:
        """Templates at their newest versions, by name; archived ones only with ``archived``; with ``for_user``
        only those that user's groups allow."""
        query = (
            select(Template, TemplateVersion)
            .join(
                TemplateVersion,
                (TemplateVersion.template_id == Template.id) & (TemplateVersion.version == Template.version),
            )
            .order_by(Template.name)
        )
        if not archived:
            query = query.where(Template.archived.is_(False))
        async with self._sessionmaker() as session:
            rows = (await session.execute(query)).all()
            member_of = await member_group_ids(session, for_user) if for_user is not None else frozenset()
        return [
            TemplateView.of(template, version)
            for template, version in rows
            if for_user is None or admits(template.allowed_groups, member_of)
        ]

    async def versions(self, ref: str) -> list[TemplateView]:
        """Every version of a template, newest first."""
        async with self._sessionmaker() as session:
            template = await self._find(session, ref)
            rows = await session.scalars(
                select(TemplateVersion)
                .where(TemplateVersion.template_id == template.id)
                .order_by(TemplateVersion.version.desc())
            )
            return [TemplateView.of(template, version) for version in rows]

    # -- writing -------------------------------------------------------------------------------------------

    def _checked(self, draft: TemplateDraft) -> TemplateDraft:
        s = self._settings
        resolved = msgspec.structs.replace(
            draft,
            default_cpu=draft.default_cpu or min(s.default_cpu, draft.max_cpu or s.max_cpu),
            max_cpu=draft.max_cpu or s.max_cpu,
            default_memory_mb=draft.default_memory_mb
            or min(s.default_memory_mb, draft.max_memory_mb or s.max_memory_mb),
            max_memory_mb=draft.max_memory_mb or s.max_memory_mb,
        )
        assert resolved.default_cpu and resolved.max_cpu and resolved.default_memory_mb and resolved.max_memory_mb
        check_resources(
            resolved.default_cpu,
            resolved.max_cpu,
            resolved.default_memory_mb,
            resolved.max_memory_mb,
            s.max_cpu,
            s.max_memory_mb,
        )
        check_variables(draft.env, draft.secrets)
        check_command(draft.command)
        if draft.dotfiles_url:
            check_git_url(draft.dotfiles_url, allow_file=False)
        return resolved

    def _version_row(
        self, template_id: str, version: int, draft: TemplateDraft, sealed: dict[str, str], by: int | None
    ) -> TemplateVersion:
        assert draft.default_cpu and draft.max_cpu and draft.default_memory_mb and draft.max_memory_mb
        return TemplateVersion(
            template_id=template_id,
            version=version,
            image=draft.image,
            default_cpu=draft.default_cpu,
            max_cpu=draft.max_cpu,
            default_memory_mb=draft.default_memory_mb,
            max_memory_mb=draft.max_memory_mb,
            env=dict(draft.env),
            secrets=sealed,
            command=draft.command,
            dotfiles_url=draft.dotfiles_url or None,
            idle_timeout=draft.idle_timeout,
            server_labels=dict(draft.server_labels),
            created_by=by,
        )

    async def create(self, draft: TemplateDraft, *, by: int | None = None) -> TemplateView:
        """A new template at version 1 (409 when the name is taken)."""
        draft = self._checked(draft)
        template = Template(id=new_id(), name=draft.name, description=draft.description, version=1)
        sealed = {name: self._box.seal(template.id, name, value) for name, value in draft.secrets.items()}
        version = self._version_row(template.id, 1, draft, sealed, by)
        async with self._sessionmaker() as session:
            template.allowed_groups = await checked_group_ids(session, draft.allowed_groups)
            session.add(template)
            try:
                await session.flush()
                session.add(version)
                await session.commit()
            except IntegrityError:
                raise Conflict(f"a template named {draft.name!r} exists", code="template_name_taken") from None
        log.info("template %s (%s) created at version 1", template.name, template.id)
        await self._publish("template.created", template, version)
        return TemplateView.of(template, version)

    async def update(self, ref: str, change: TemplateChange, *, by: int | None = None) -> TemplateView:
        """Rename, describe, or (any other field) add a version built from the newest with the changes."""
        async with self._sessionmaker() as session:
            template = await self._find(session, ref)
            current = await self._version(session, template.id, template.version)
            version = current
            if change.makes_version():
                draft, sealed = self._draft_from(template, current, change)
                version = self._version_row(template.id, template.version + 1, draft, sealed, by)
                session.add(version)
                template.version += 1
            if change.name is not None:
                template.name = change.name
            if change.description is not None:
                template.description = change.description
            if change.allowed_groups is not None:
                template.allowed_groups = await checked_group_ids(session, change.allowed_groups)
            template.updated_at = utcnow()
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(
                    f"template {ref!r} was changed at the same time, or the name is taken; read it and retry",
                    code="template_conflict",
                ) from None
        log.info("template %s (%s) updated, now at version %d", template.name, template.id, template.version)
        await self._publish("template.updated", template, version)
        return TemplateView.of(template, version)

    def _draft_from(
        self, template: Template, current: TemplateVersion, change: TemplateChange
    ) -> tuple[TemplateDraft, dict[str, str]]:
        def pick[T](new: T | None, old: T) -> T:
            return old if new is None else new

        sealed = {k: v for k, v in (current.secrets or {}).items() if k not in change.remove_secrets}
        new_secrets = change.secrets or {}
        env = pick(change.env, dict(current.env or {}))
        dotfiles = pick(change.dotfiles_url, current.dotfiles_url or "") or None
        idle = pick(change.idle_timeout, current.idle_timeout)
        draft = TemplateDraft(
            name=template.name,
            description=template.description,
            image=pick(change.image, current.image),
            default_cpu=pick(change.default_cpu, current.default_cpu),
            max_cpu=pick(change.max_cpu, current.max_cpu),
            default_memory_mb=pick(change.default_memory_mb, current.default_memory_mb),
            max_memory_mb=pick(change.max_memory_mb, current.max_memory_mb),
            env=env,
            secrets=dict.fromkeys(set(sealed) | set(new_secrets), ""),  # names only, for the checks
            command=pick(change.command, current.command),
            dotfiles_url=dotfiles,
            idle_timeout=None if idle is not None and idle < 0 else idle,
            server_labels=pick(change.server_labels, dict(current.server_labels or {})),
        )
        draft = self._checked(draft)
        sealed.update({name: self._box.seal(template.id, name, value) for name, value in new_secrets.items()})
        return draft, sealed

    async def remove(self, ref: str) -> str:
        """Delete a template no workspace uses; archive one in use (its workspaces keep their version).

        Returns ``deleted`` or ``archived``."""
        async with self._sessionmaker() as session:
            template = await self._find(session, ref)
            version = await self._version(session, template.id, template.version)
            used = await session.scalar(select(func.count(Workspace.id)).where(Workspace.template_id == template.id))
            outcome = "archived" if used else "deleted"
            if used:
                template.archived = True
                template.updated_at = utcnow()
            else:
                await session.delete(template)
            await session.commit()
        log.info("template %s (%s) %s", template.name, template.id, outcome)
        await self._publish(f"template.{outcome}", template, version)
        return outcome

    async def ensure_default(self) -> None:
        """A fresh install (no templates at all) gets ``default``: the hub's default image and resources."""
        async with self._sessionmaker() as session:
            if await session.scalar(select(func.count(Template.id))):
                return
        s = self._settings
        draft = TemplateDraft(name=DEFAULT_NAME, description="The hub's default workspace", image=s.default_image)
        with contextlib.suppress(Conflict):  # another hub process made it first
            await self.create(draft)

    async def _publish(self, type_: str, template: Template, version: TemplateVersion) -> None:
        data = {"template_id": template.id, "name": template.name, "version": version.version, "image": version.image}
        try:
            await self._events.publish(ADMIN_TOPIC, type_, data)
        except DomainError as exc:
            log.warning("event %s for template %s not published: %s", type_, template.id, exc.detail)

    # -- workspaces ----------------------------------------------------------------------------------------

    async def plan(self, ref: str, *, cpu: float | None, memory_mb: int | None, for_user: int | None = None) -> Plan:
        """The newest version of a template for a new workspace, with resources checked against its bounds;
        with ``for_user``, 403 unless that user is in one of the template's allowed groups."""
        async with self._sessionmaker() as session:
            try:
                template = await self._find(session, ref)
            except NotFound:
                raise Unprocessable(f"no template {ref!r}", code="unknown_template") from None
            if for_user is not None and not admits(template.allowed_groups, await member_group_ids(session, for_user)):
                raise Forbidden(
                    f"template {template.name!r} is limited to groups you are not in; ask an admin to add you",
                    code="template_not_allowed",
                )
            if template.archived:
                raise Unprocessable(f"template {template.name!r} is archived; pick another", code="template_archived")
            version = await self._version(session, template.id, template.version)
        cpu, memory_mb = self._within(version, cpu or version.default_cpu, memory_mb or version.default_memory_mb)
        return Plan(
            template_id=template.id,
            template_name=template.name,
            version=version.version,
            image=version.image,
            cpu=cpu,
            memory_mb=memory_mb,
            server_labels=dict(version.server_labels or {}),
            idle_timeout=version.idle_timeout,
        )

    async def check_bounds(self, template_id: str, version: int, cpu: float | None, memory_mb: int | None) -> None:
        """A change of a templated workspace's resources must stay within its version's bounds."""
        async with self._sessionmaker() as session:
            row = await self._version(session, template_id, version)
        self._within(row, cpu or row.default_cpu, memory_mb or row.default_memory_mb)

    @staticmethod
    def _within(version: TemplateVersion, cpu: float, memory_mb: int) -> tuple[float, int]:
        if cpu > version.max_cpu:
            raise Unprocessable(
                f"this template allows at most {version.max_cpu:g} CPUs; ask for {version.max_cpu:g} or fewer",
                code="outside_template_bounds",
            )
        if memory_mb > version.max_memory_mb:
            raise Unprocessable(
                f"this template allows at most {version.max_memory_mb} MiB of memory; ask for that or less",
                code="outside_template_bounds",
            )
        return cpu, memory_mb

    async def launch(self, template_id: str, version: int) -> Launch:
        """Environment (variables, opened secrets, the dotfiles URL) and command of a start at ``version``."""
        async with self._sessionmaker() as session:
            row = await self._version(session, template_id, version)
        env = dict(row.env or {})
        env.update({name: self._box.open(template_id, name, sealed) for name, sealed in (row.secrets or {}).items()})
        if row.dotfiles_url:
            env[DOTFILES_ENV] = row.dotfiles_url
        return Launch(env, tuple(shlex.split(row.command)))
