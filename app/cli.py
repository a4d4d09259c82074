"""The ``codehub`` command: serve, migrate, create-user, token, templates (``app.cli_templates``)."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from app.cli_templates import add_template_commands
from app.settings import SettingsError, load_settings, setting_docs

if TYPE_CHECKING:  # the commands import what they use when they run: `codehub --help` stays quick
    from app.models import User
    from app.services.auth.users import AuthService


def _settings_epilog() -> str:
    lines = ["environment (CODEHUB_*):"]
    for doc in setting_docs():
        default = doc.default if doc.default else '""'
        lines.append(f"  {doc.env} (default {default})\n      {doc.help}")
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app import db
    from app.factory import create_app
    from app.streams.events.direct_http import DirectHttpProtocol  # live SSE frames are written by the fan-out
    from app.streams.events.hub import tune_gc_for_streaming
    from app.streams.relay.splice import SpliceProtocol  # relayed WebSockets are spliced, not re-framed

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides)
    engine = db.create_engine(settings)
    try:
        anyio.run(db.check_migrated, engine)
    except db.MigrationRequired as exc:
        print(f"codehub: {exc}", file=sys.stderr)
        return 2
    finally:
        anyio.run(engine.dispose)
    if args.reload:
        uvicorn.run(
            "app.factory:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            reload=True,
            reload_dirs=["app"],
            access_log=False,
            log_config=None,
            lifespan="on",
            ws=SpliceProtocol,
            http=DirectHttpProtocol,
        )
        return 0
    tune_gc_for_streaming()  # a server process holds thousands of long-lived streams; tests and CLI do not
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ws_max_size=16 * 1024 * 1024,
        proxy_headers=False,
        ws=SpliceProtocol,
        http=DirectHttpProtocol,
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from app import db

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.resolved_database_url, args.revision)
    print(f"database at {args.revision}: {settings.resolved_database_url.split('@')[-1]}")
    return 0


async def _with_auth[T](fn: Callable[[AuthService], Awaitable[T]]) -> T:
    from app import db
    from app.services.auth.users import AuthService

    settings = load_settings()
    engine = db.create_engine(settings)
    try:
        await db.check_migrated(engine)
        return await fn(AuthService(db.create_sessionmaker(engine), settings))
    finally:
        await engine.dispose()


def _create_user(args: argparse.Namespace) -> int:
    password = args.password or secrets.token_urlsafe(18)
    role = "admin" if args.admin else "user"

    async def run(auth: AuthService) -> tuple[User, str]:
        user = await auth.create_user(args.name, password, role)
        _, raw = await auth.issue_token(user.id, name="cli")
        return user, raw

    user, raw = anyio.run(_with_auth, run)
    print(f"created {role} {user.username!r} (id {user.id})")
    if not args.password:
        print(f"password: {password}")
    print(raw)
    return 0


def _token(args: argparse.Namespace) -> int:
    async def run(auth: AuthService) -> str:
        user = await auth.get_user_by_name(args.name)
        _, raw = await auth.issue_token(user.id, name=args.token_name)
        return raw

    print(anyio.run(_with_auth, run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``codehub``."""
    parser = argparse.ArgumentParser(prog="codehub", description="code-hub: browser development workspaces.")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    serve = sub.add_parser("serve", help="run the hub", epilog=_settings_epilog(), formatter_class=fmt)
    serve.add_argument("--host", help="bind address (CODEHUB_HOST)")
    serve.add_argument("--port", type=int, help="bind port (CODEHUB_PORT)")
    serve.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser(
        "migrate",
        help="upgrade the database to the newest schema",
        epilog=_settings_epilog(),
        formatter_class=fmt,
    )
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(func=_migrate)
    create = sub.add_parser("create-user", help="create a user; prints its API token as the last line")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="give the admin role")
    create.add_argument("--password", help="password (default: a random one, printed)")
    create.set_defaults(func=_create_user)
    token = sub.add_parser("token", help="print a new API token for an existing user")
    token.add_argument("name")
    token.add_argument("--token-name", default="cli", help="label of the token")
    token.set_defaults(func=_token)
    add_template_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``codehub`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"codehub: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from app.errors import DomainError

        if isinstance(exc, DomainError):
            print(f"codehub: {exc.detail}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
