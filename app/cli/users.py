"""``codehub create-user``, ``codehub token`` and ``codehub users …``: straight on the database, no hub needed.

Disabling a user, or changing a password, drops the user's cached tokens in every hub process through Redis
when ``CODEHUB_REDIS_URL`` is set; without Redis the hub process finds out within
``CODEHUB_TOKEN_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import argparse
import secrets
from typing import TYPE_CHECKING, Any

import anyio

from app.cli.common import CliError, cli_settings, parse_duration, with_auth

if TYPE_CHECKING:
    from app.models import User
    from app.services.auth.users import AuthService

LIST_PAGE = 500


async def _user(auth: AuthService, name: str) -> User:
    from app.errors import NotFound, Unprocessable

    try:
        return await auth.get_user_by_name(name)
    except (NotFound, Unprocessable):
        raise CliError(f"no user {name!r}", "`codehub users list` shows who exists") from None


def create_user(args: argparse.Namespace) -> int:
    """Create a user and print a first API token (the last line)."""
    from app.errors import Conflict

    password = args.password or secrets.token_urlsafe(18)
    role = "admin" if args.admin else "user"

    async def run(auth: AuthService) -> tuple[User, str]:
        try:
            user = await auth.create_user(args.name, password, role)
        except Conflict:
            raise CliError(f"user {args.name!r} exists", f"`codehub token {args.name}` gives it a token") from None
        _, raw = await auth.issue_token(user.id, name="cli")
        return user, raw

    user, raw = anyio.run(with_auth, cli_settings(), run)
    print(f"created {role} {user.username!r} (id {user.id})")
    if not args.password:
        print(f"password: {password}")
    print(raw)
    return 0


def token(args: argparse.Namespace) -> int:
    """Print a new API token for a user (optionally expiring)."""
    from app.models import utcnow

    expires_at = utcnow() + parse_duration(args.expires) if args.expires else None

    async def run(auth: AuthService) -> str:
        user = await _user(auth, args.name)
        if user.disabled:
            raise CliError(f"user {user.username!r} is disabled", f"`codehub users enable {user.username}` first")
        _, raw = await auth.issue_token(user.id, name=args.token_name, expires_at=expires_at)
        return raw

    raw = anyio.run(with_auth, cli_settings(), run)
    if expires_at is not None:
        print(f"expires {expires_at.isoformat(timespec='seconds')}")
    print(raw)
    return 0


def list_users(args: argparse.Namespace) -> int:
    """Print every user: id, name, role, state, created."""

    async def run(auth: AuthService) -> list[User]:
        found: list[User] = []
        while page := await auth.list_users(limit=LIST_PAGE, offset=len(found)):
            found.extend(page)
        return found

    users = anyio.run(with_auth, cli_settings(), run)
    print(f"{'ID':>5}  {'USERNAME':<24} {'ROLE':<6} {'STATE':<9} CREATED")
    for user in users:
        state = "disabled" if user.disabled else "enabled"
        created = user.created_at.strftime("%Y-%m-%d %H:%M")
        print(f"{user.id:>5}  {user.username:<24} {user.role:<6} {state:<9} {created}")
    return 0


def _set_disabled(name: str, disabled: bool) -> int:
    async def run(auth: AuthService) -> User:
        user = await _user(auth, name)
        return await auth.update_user(user.id, disabled=disabled)

    user = anyio.run(with_auth, cli_settings(), run)
    print(f"{user.username!r} is {'disabled' if disabled else 'enabled'}")
    return 0


def disable(args: argparse.Namespace) -> int:
    """Disable a user: their tokens stop working and they cannot sign in."""
    return _set_disabled(args.name, True)


def enable(args: argparse.Namespace) -> int:
    """Enable a disabled user again."""
    return _set_disabled(args.name, False)


def reset_password(args: argparse.Namespace) -> int:
    """Set a new password (random and printed unless ``--password``)."""
    password = args.password or secrets.token_urlsafe(18)

    async def run(auth: AuthService) -> User:
        user = await _user(auth, args.name)
        return await auth.update_user(user.id, password=password)

    user = anyio.run(with_auth, cli_settings(), run)
    print(f"new password for {user.username!r}" + ("" if args.password else f": {password}"))
    return 0


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``create-user``, ``token`` and ``users``."""
    create = sub.add_parser("create-user", help="create a user; prints its API token as the last line")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="give the admin role")
    create.add_argument("--password", help="password (default: a random one, printed)")
    create.set_defaults(func=create_user)

    new_token = sub.add_parser("token", help="print a new API token for an existing user (last line)")
    new_token.add_argument("name")
    new_token.add_argument("--token-name", default="cli", help="label of the token (default cli)")
    new_token.add_argument("--expires", metavar="DURATION", help="lifetime such as 30d, 12h, 90m (default: none)")
    new_token.set_defaults(func=token)

    users = sub.add_parser("users", help="list, disable, enable users or reset a password")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every user with role and state").set_defaults(func=list_users)
    for name, func, text in (
        ("disable", disable, "disable a user (their tokens stop working)"),
        ("enable", enable, "enable a disabled user"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name")
        action.set_defaults(func=func)
    reset = actions.add_parser("reset-password", help="set a new password (random and printed by default)")
    reset.add_argument("name")
    reset.add_argument("--password", help="the new password (default: a random one, printed)")
    reset.set_defaults(func=reset_password)
