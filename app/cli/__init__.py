"""The ``codehub`` command. ``server`` runs and migrates the hub; ``users`` manages users and tokens on the
database directly; ``workspaces`` talks to a running hub's API; ``templates`` manages workspace templates.
Every failure is one line on stderr that says what to do next (``--traceback`` shows the trace of an
unexpected one)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.cli import server, templates, users, workspaces
from app.cli.common import explain

__all__ = ["build_parser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage mistake told in one line that points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``codehub <command>: <message>: see `<command> --help``` and exit 2."""
        self.exit(2, f"{self.prog}: {message}: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``codehub``."""
    from app.version import hub_version

    parser = OneLineParser(prog="codehub", description="code-hub: browser development workspaces.")
    parser.add_argument("--version", action="version", version=f"codehub {hub_version()}")
    parser.add_argument("--traceback", action="store_true", help="show the trace of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.add_commands(sub)
    users.add_commands(sub)
    workspaces.add_commands(sub)
    templates.add_template_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``codehub`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from app.settings import load_settings

        try:
            settings = load_settings()
        except Exception:  # the settings themselves may be what failed
            settings = None
        known = explain(exc, settings)
        if known is None and args.traceback:
            raise
        if known is None:
            what = f"{type(exc).__name__}: {exc}".splitlines()[0][:300] if str(exc) else type(exc).__name__
            print(f"codehub: unexpected error ({what}): rerun with --traceback and report it", file=sys.stderr)
            return 1
        print(f"codehub: {known}", file=sys.stderr)
        return known.code
