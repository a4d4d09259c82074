"""``codehub serve`` and ``codehub migrate``."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from app.cli.common import CliError, cli_settings, database_place
from app.settings import Settings, setting_docs


def settings_epilog() -> str:
    """Every setting with its variable, default and help (shown by ``codehub serve --help``)."""
    lines = ["environment (CODEHUB_*):"]
    for doc in setting_docs():
        default = doc.default if doc.default else '""'
        lines.append(f"  {doc.env} (default {default})\n      {doc.help}")
    return "\n".join(lines)


def uvicorn_options(settings: Settings, *, reload: bool = False) -> dict[str, Any]:
    """The uvicorn options of a hub process (``codehub serve``; benches serve the hub with them too)."""
    from app.streams.events.direct_http import DirectHttpProtocol  # live SSE frames are written by the fan-out
    from app.streams.relay.splice import SpliceProtocol  # relayed WebSockets are spliced, not re-framed

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,
        "log_config": None,
        "lifespan": "on",
        "ws": SpliceProtocol,
        "http": DirectHttpProtocol,
    }
    if not reload:
        options.update(timeout_graceful_shutdown=5, ws_max_size=16 * 1024 * 1024, proxy_headers=False)
    return options


def serve(args: argparse.Namespace) -> int:
    """Check the database is migrated, then run the hub on uvicorn."""
    import uvicorn

    from app import db
    from app.factory import create_app
    from app.streams.events.hub import tune_gc_for_streaming

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = cli_settings(**overrides)
    engine = db.create_engine(settings)
    try:
        anyio.run(db.check_migrated, engine)
    finally:
        anyio.run(engine.dispose)
    if args.reload:
        options = uvicorn_options(settings, reload=True)
        uvicorn.run("app.factory:create_app", factory=True, reload=True, reload_dirs=["app"], **options)
        return 0
    tune_gc_for_streaming()  # a server process holds thousands of long-lived streams; tests and CLI do not
    uvicorn.run(create_app(settings), **uvicorn_options(settings))
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Upgrade (or move) the database schema to ``--revision``."""
    from alembic.util import CommandError

    from app import db

    settings = cli_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        db.upgrade(settings.resolved_database_url, args.revision)
    except CommandError as exc:
        raise CliError(f"cannot migrate to {args.revision!r} ({exc})", "omit --revision to reach the newest") from None
    print(f"database at {args.revision}: {database_place(settings)}")
    return 0


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``serve`` and ``migrate``."""
    run = sub.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub (the database must be migrated). Every setting is listed below.",
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--host", help="bind address (CODEHUB_HOST)")
    run.add_argument("--port", type=int, help="bind port (CODEHUB_PORT)")
    run.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    run.set_defaults(func=serve)
    upgrade = sub.add_parser(
        "migrate",
        help="upgrade the database to the newest schema",
        description="Create or upgrade the database (CODEHUB_DATABASE_URL). Safe to run on every start.",
    )
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(func=migrate)
