"""What every ``codehub`` command shares: one-line errors with the next step, and a database session."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from app.settings import Settings, load_settings

if TYPE_CHECKING:  # imported when a command runs: `codehub --help` stays quick
    from app.services.auth.users import AuthService


class CliError(Exception):
    """A failure told in one line: what went wrong, then what to do next."""

    def __init__(self, what: str, next_step: str = "", *, code: int = 1) -> None:
        super().__init__(f"{what}: {next_step}" if next_step else what)
        self.code = code


def database_place(settings: Settings) -> str:
    """Where the database is, without credentials (for messages)."""
    return settings.resolved_database_url.split("@")[-1]


def explain(exc: BaseException, settings: Settings | None) -> CliError | None:
    """The one-line error for a known failure (None for a bug)."""
    from sqlalchemy.exc import DBAPIError

    from app.db import MigrationRequired
    from app.errors import DomainError

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, MigrationRequired):
        return CliError(str(exc).split(": run")[0], "run `codehub migrate` first", code=2)
    if isinstance(exc, DBAPIError | OSError):
        place = database_place(settings) if settings else "CODEHUB_DATABASE_URL"
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        return CliError(
            f"cannot use the database at {place} ({reason})",
            "check CODEHUB_DATABASE_URL and that the database is up, or run `codehub migrate` to create it",
            code=2,
        )
    if isinstance(exc, DomainError):
        return CliError(exc.detail)
    return None


async def with_auth[T](settings: Settings, fn: Callable[[AuthService], Awaitable[T]]) -> T:
    """Run ``fn`` with an ``AuthService`` on a migrated database; revocations reach the hubs over Redis."""
    from app import db
    from app.services.auth.revocations import RedisRevocations
    from app.services.auth.users import AuthService

    engine = db.create_engine(settings)
    revocations = RedisRevocations(settings) if settings.redis_url else None
    try:
        await db.check_migrated(engine)
        return await fn(AuthService(db.create_sessionmaker(engine), settings, revocations))
    finally:
        if revocations is not None:
            await revocations.aclose()
        await engine.dispose()


def cli_settings(**overrides: Any) -> Settings:
    """The hub's settings from the environment (a bad value becomes a one-line error)."""
    from app.settings import SettingsError

    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        raise CliError(str(exc), "fix the variable or unset it", code=2) from None


_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EXPIRY = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``2w`` as a time span (at most ten years)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise CliError(f"--expires {text!r} is not a duration", "write it like 30d, 12h, 90m or 2w")
    span = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if not timedelta(0) < span <= MAX_EXPIRY:
        raise CliError(f"--expires {text!r} is out of range", "give 1s to 3650d, like 30d")
    return span
