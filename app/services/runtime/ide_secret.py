"""The IDE secret: a credential per workspace start that only the relay presents, so the IDE refuses everyone else.

The credential is derived, never stored: ``HMAC-SHA256(server key, workspace id, start generation)``. Every hub
process that shares the key (``CODEHUB_SECRET_KEY``, or the key generated once into ``<data dir>/secret_key``)
recomputes it from the workspace row, a restarted hub included, and a new start (a new generation) gets a new
one. It travels to the IDE in its environment and to the IDE on every relayed request as code-server's
session cookie.

code-server (4.x) is run with ``--auth password`` and ``HASHED_PASSWORD=<credential>``. A hashed password
without ``$argon`` puts code-server in its legacy SHA256 mode, where a request is authenticated by comparing
the ``code-server-session`` cookie with that value (``safeCompare``): microseconds per request. Its
``PASSWORD`` mode stores an argon2 hash in the cookie and runs ``argon2.verify`` on every request (tens of
milliseconds of CPU), which the relay's traffic cannot afford. No password hashing to the credential is known
to anyone, so code-server's login form cannot be used either.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from app.settings import Settings

IDE_COOKIE = b"code-server-session"
HASHED_PASSWORD_ENV = "HASHED_PASSWORD"
SECRET_ENV = "CODEHUB_IDE_SECRET"
KEY_FILE = "secret_key"
_CONTEXT = b"codehub ide secret\0"
_COOKIES_KEPT = 50_000


class IdeSecret:
    """The credential of one start. Its ``repr``/``str`` never show the value, so a logged spec leaks nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself (for the IDE's environment only)."""
        return self._value

    def __repr__(self) -> str:
        return "IdeSecret(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdeSecret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def ide_env(self, *, generic: bool) -> dict[str, str]:
        """Environment that makes the IDE require it: code-server's ``HASHED_PASSWORD``; with ``generic`` also
        ``CODEHUB_IDE_SECRET`` for IDE commands that are not code-server."""
        env = {HASHED_PASSWORD_ENV: self._value}
        if generic:
            env[SECRET_ENV] = self._value
        return env


class IdeSecrets:
    """Derives the credential of any start from the server key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cookies: dict[tuple[str, int], bytes] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> IdeSecrets:
        """Over the hub's server key (``CODEHUB_SECRET_KEY`` or the generated one)."""
        return cls(server_key(settings))

    def _derive(self, workspace_id: str, generation: int) -> str:
        message = _CONTEXT + f"{workspace_id}\0{generation}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def for_start(self, workspace_id: str, generation: int) -> IdeSecret:
        """The credential of the start that made ``generation``."""
        return IdeSecret(self._derive(workspace_id, generation))

    def cookie(self, workspace_id: str, generation: int) -> bytes | None:
        """``code-server-session=<credential>`` for a running start; None for generation 0, which no start made."""
        if generation <= 0:
            return None
        key = (workspace_id, generation)
        value = self._cookies.get(key)
        if value is None:
            if len(self._cookies) > _COOKIES_KEPT:
                self._cookies.clear()
            value = self._cookies[key] = IDE_COOKIE + b"=" + self._derive(workspace_id, generation).encode()
        return value


def ide_cookie_header(values: list[bytes], cookie: bytes | None) -> bytes | None:
    """The one ``Cookie`` header to send the IDE, from the browser's ``Cookie`` header ``values``: led by
    ``cookie`` (the start's IDE session), whatever the browser sent; None when nothing is left.

    The browser's own ``code-server-session`` cookies are dropped (code-server takes a name's first value and
    trims names, so ``" code-server-session"`` counts too).
    """
    if cookie is None and len(values) == 1 and IDE_COOKIE not in values[0]:
        return values[0]
    kept: list[bytes] = [cookie] if cookie is not None else []
    for value in values:
        kept += [
            part.strip() for part in value.split(b";") if part.strip() and part.partition(b"=")[0].strip() != IDE_COOKIE
        ]
    return b"; ".join(kept) if kept else None


def require_password_auth(argv: Sequence[str]) -> list[str]:
    """``argv`` with code-server's ``--auth none`` turned into ``--auth password`` (wherever it stands: a wrapper
    such as ``dumb-init --`` may come first)."""
    out = list(argv)
    for index, arg in enumerate(out):
        if arg == "--auth=none":
            out[index] = "--auth=password"
        elif arg == "--auth" and index + 1 < len(out) and out[index + 1] == "none":
            out[index + 1] = "password"
    return out


def local_launch(argv: Sequence[str], secret: IdeSecret | None) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment of a local IDE process that must require ``secret`` (none: unchanged)."""
    if secret is None:
        return list(argv), {}
    return require_password_auth(argv), secret.ide_env(generic=True)


def password_auth_overrides(entrypoint: Sequence[str], cmd: Sequence[str]) -> dict[str, list[str]]:
    """The container's ``Entrypoint`` and ``Cmd`` when ``--auth none`` had to become ``--auth password`` ({} when
    neither asks for ``none``: code-server's default is password auth). Both are given, since Docker drops the
    image's CMD when the entrypoint is overridden."""
    argv = require_password_auth([*entrypoint, *cmd])
    if argv == [*entrypoint, *cmd]:
        return {}
    return {"Entrypoint": argv[: len(entrypoint)], "Cmd": argv[len(entrypoint) :]}


def server_key(settings: Settings) -> bytes:
    """``CODEHUB_SECRET_KEY``, else the key in ``<data dir>/secret_key`` (generated with mode 0600 when missing)."""
    return _load_key(settings.secret_key, settings.data_dir.resolve())


@functools.lru_cache(maxsize=8)
def _load_key(configured: str, data_dir: Path) -> bytes:
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{KEY_FILE}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
        finally:
            os.close(fd)
        try:
            os.link(draft, path)  # another hub process may have won the race: its key stays
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable key (fewer than 32 characters): delete it to generate one")
    return key
