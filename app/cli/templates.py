"""``codehub templates …``: list, show, versions, create, update, delete, images and pull, on the database
(and, for images and pulls, the registered Docker servers) without a running hub.

Secret values are never taken from the command line (they would show in ``ps`` and shell history): ``--secret
NAME`` reads NAME from this command's environment, or asks for it without echo. ``--allowed-group NAME``
names a group (``SOURCE:NAME`` when a local and a synced group share the name); the template stores its id.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from app.settings import load_settings

if TYPE_CHECKING:
    from app.db import SessionMaker
    from app.services.templates.service import TemplateService, TemplateView


def _pairs(values: Sequence[str] | None, what: str) -> dict[str, str] | None:
    if values is None:
        return None
    found: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"codehub: {what} {value!r} is not KEY=VALUE")
        found[key] = rest
    return found


def _secret_values(names: Sequence[str] | None) -> dict[str, str] | None:
    if names is None:
        return None
    values: dict[str, str] = {}
    for name in names:
        value = os.environ.get(name)
        if value is None:
            if not sys.stdin.isatty():
                raise SystemExit(f"codehub: set {name} in the environment of this command to give its value")
            value = getpass.getpass(f"value of secret {name}: ")
        values[name] = value
    return values


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "description": args.description,
        "image": args.image,
        "default_cpu": args.cpu,
        "max_cpu": args.max_cpu,
        "default_memory_mb": args.memory_mb,
        "max_memory_mb": args.max_memory_mb,
        "env": _pairs(args.env, "--env"),
        "secrets": _secret_values(args.secret),
        "command": args.startup_command,
        "dotfiles_url": args.dotfiles_url,
        "idle_timeout": args.idle_timeout,
        "server_labels": _pairs(args.label, "--label"),
    }
    return {key: value for key, value in fields.items() if value is not None}


@asynccontextmanager
async def _opened() -> AsyncIterator[tuple[SessionMaker, TemplateService]]:
    from app import db
    from app.services.templates.service import TemplateService
    from app.streams.events.backend import open_hub

    settings = load_settings()
    engine = db.create_engine(settings)
    try:
        await db.check_migrated(engine)
        sessionmaker = db.create_sessionmaker(engine)
        async with open_hub(settings) as hub:
            yield sessionmaker, TemplateService(sessionmaker, settings, hub)
    finally:
        await engine.dispose()


async def _with_templates[T](fn: Callable[[TemplateService], Awaitable[T]]) -> T:
    async with _opened() as (_, templates):
        return await fn(templates)


async def _group_ids(sessionmaker: SessionMaker, names: Sequence[str]) -> list[int]:
    """The ids of the groups ``names`` (``NAME`` or ``SOURCE:NAME``); one-line errors for unknown or ambiguous."""
    from sqlalchemy import select

    from app.errors import BadRequest
    from app.models import Group

    async with sessionmaker() as session:
        rows = (await session.execute(select(Group.id, Group.name, Group.source))).all()
    ids: list[int] = []
    for given in names:
        source, sep, name = given.rpartition(":") if ":" in given else ("", "", given)
        found = [row for row in rows if row.name == name and (not sep or row.source == source)]
        if not found:
            raise BadRequest(f"no group {given!r}; GET /api/admin/groups lists them")
        if len(found) > 1:
            choices = " or ".join(f"{row.source}:{row.name}" for row in found)
            raise BadRequest(f"more than one group is named {given!r}; give {choices}")
        if found[0].id not in ids:
            ids.append(found[0].id)
    return ids


async def _with_groups[T](
    names: Sequence[str] | None, fn: Callable[[TemplateService, list[int] | None], Awaitable[T]]
) -> T:
    async with _opened() as (sessionmaker, templates):
        return await fn(templates, None if names is None else await _group_ids(sessionmaker, names))


async def _with_images(fn: Callable[[Any, TemplateService], Awaitable[None]]) -> None:
    from app import db
    from app.events import EventPublisher
    from app.services.runtime.cache import MemoryStatusCache
    from app.services.runtime.engines import Engines
    from app.services.templates.images import TemplateImages
    from app.services.templates.service import TemplateService

    class Printer(EventPublisher):
        async def publish(self, topic: str, type: str, data: dict[str, Any], *, also: Sequence[str] = ()) -> str:
            shown = {k: v for k, v in data.items() if k not in ("pull_id", "template_id", "detail")}
            print(type, " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
            return "0"

    settings = load_settings()
    engine = db.create_engine(settings)
    try:
        await db.check_migrated(engine)
        sessionmaker = db.create_sessionmaker(engine)
        async with Engines(settings, sessionmaker, MemoryStatusCache()) as engines, anyio.create_task_group() as tasks:
            images = TemplateImages(sessionmaker, settings, engines, Printer(), tasks)
            await fn(images, TemplateService(sessionmaker, settings, Printer()))
    finally:
        await engine.dispose()


def _show(view: TemplateView) -> None:
    print(msgspec.json.format(msgspec.json.encode(view)).decode())


def _list(args: argparse.Namespace) -> int:
    views = anyio.run(lambda: _with_templates(lambda t: t.list_templates(archived=args.archived)))
    for view in views:
        flag = "  (archived)" if view.archived else ""
        print(
            f"{view.name:<24} v{view.version:<4} {view.image}  cpu<={view.max_cpu:g} mem<={view.max_memory_mb}MiB{flag}"
        )
    return 0


def _get(args: argparse.Namespace) -> int:
    _show(anyio.run(lambda: _with_templates(lambda t: t.get(args.ref, version=args.version))))
    return 0


def _versions(args: argparse.Namespace) -> int:
    for view in anyio.run(lambda: _with_templates(lambda t: t.versions(args.ref))):
        print(f"v{view.version:<4} {view.version_created_at:%Y-%m-%d %H:%M}  {view.image}")
    return 0


def _create(args: argparse.Namespace) -> int:
    from app.services.templates.drafts import TemplateDraft

    values = {"name": args.name, **_fields(args)}

    async def run(templates: TemplateService, groups: list[int] | None) -> TemplateView:
        draft = _convert(values if groups is None else {**values, "allowed_groups": groups}, TemplateDraft)
        return await templates.create(draft)

    _show(anyio.run(_with_groups, args.allowed_group, run))
    return 0


def _update(args: argparse.Namespace) -> int:
    from app.services.templates.drafts import TemplateChange

    values = _fields(args)
    if args.rename:
        values["name"] = args.rename
    if args.remove_secret:
        values["remove_secrets"] = args.remove_secret
    if args.any_group and args.allowed_group:
        raise SystemExit("codehub: give --any-group or --allowed-group, not both")
    groups = [] if args.any_group else args.allowed_group

    async def run(templates: TemplateService, ids: list[int] | None) -> TemplateView:
        change = _convert(values if ids is None else {**values, "allowed_groups": ids}, TemplateChange)
        return await templates.update(args.ref, change)

    _show(anyio.run(_with_groups, groups, run))
    return 0


def _delete(args: argparse.Namespace) -> int:
    outcome = anyio.run(lambda: _with_templates(lambda t: t.remove(args.ref)))
    print(f"template {args.ref} {outcome}" + (" (workspaces still use it)" if outcome == "archived" else ""))
    return 0


def _images(args: argparse.Namespace) -> int:
    async def run(images: Any, templates: TemplateService) -> None:
        view = await templates.get(args.ref)
        for where in await images.where(view.image):
            state = {True: "present", False: "missing", None: f"unknown ({where.error})"}[where.present]
            print(f"{where.server_name:<24} {view.image}  {state}")

    anyio.run(_with_images, run)
    return 0


def _pull(args: argparse.Namespace) -> int:
    async def run(images: Any, templates: TemplateService) -> None:
        view = await templates.get(args.ref)
        await images.pull(view.id, view.image, args.server or None)

    anyio.run(_with_images, run)
    return 0


def _convert[T](values: dict[str, Any], kind: type[T]) -> T:
    from app.errors import BadRequest

    try:
        return msgspec.convert(values, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None


def _template_options(parser: argparse.ArgumentParser, *, image_required: bool) -> None:
    parser.add_argument("--image", required=image_required, help="container image")
    parser.add_argument("--description")
    parser.add_argument("--cpu", type=float, help="default CPUs")
    parser.add_argument("--max-cpu", type=float, help="most CPUs a workspace may ask for")
    parser.add_argument("--memory-mb", type=int, help="default memory (MiB)")
    parser.add_argument("--max-memory-mb", type=int, help="most memory (MiB) a workspace may ask for")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="a variable (repeatable; replaces all)")
    parser.add_argument("--secret", action="append", metavar="NAME", help="a secret, value from $NAME or a prompt")
    parser.add_argument("--startup-command", help="command (shell words) replacing the image's")
    parser.add_argument("--dotfiles-url", help="dotfiles repository (CODEHUB_DOTFILES_URL in the workspace)")
    parser.add_argument("--idle-timeout", type=float, help="seconds idle before a stop (0 = never)")
    parser.add_argument("--label", action="append", metavar="KEY=VALUE", help="servers must carry it (repeatable)")
    parser.add_argument(
        "--allowed-group",
        action="append",
        metavar="NAME",
        help="only its members may use it (repeatable; replaces all)",
    )


def add_template_commands(sub: Any) -> None:
    """Add ``codehub templates …`` to the command parser's subparsers."""
    templates = sub.add_parser("templates", help="manage workspace templates (admins)")
    actions = templates.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="templates at their newest versions")
    listing.add_argument("--archived", action="store_true", help="include archived ones")
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", help="one template as JSON (secret names only)")
    show.add_argument("ref", help="id or name")
    show.add_argument("--version", type=int)
    show.set_defaults(func=_get)
    versions = actions.add_parser("versions", help="every version, newest first")
    versions.add_argument("ref")
    versions.set_defaults(func=_versions)
    create = actions.add_parser("create", help="a new template at version 1")
    create.add_argument("name")
    _template_options(create, image_required=True)
    create.set_defaults(func=_create)
    update = actions.add_parser("update", help="change a template (a new version unless only name/description)")
    update.add_argument("ref")
    _template_options(update, image_required=False)
    update.add_argument("--any-group", action="store_true", help="drop the group limit: everyone may use it")
    update.add_argument("--rename", help="new name")
    update.add_argument("--remove-secret", action="append", metavar="NAME", help="drop a secret (repeatable)")
    update.set_defaults(func=_update)
    remove = actions.add_parser("delete", help="delete (archive while workspaces use it)")
    remove.add_argument("ref")
    remove.set_defaults(func=_delete)
    images = actions.add_parser("images", help="which servers hold the template's image")
    images.add_argument("ref")
    images.set_defaults(func=_images)
    pull = actions.add_parser("pull", help="pull the template's image onto servers, printing progress")
    pull.add_argument("ref")
    pull.add_argument("--server", action="append", metavar="ID", help="only this server (repeatable)")
    pull.set_defaults(func=_pull)
