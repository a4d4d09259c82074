"""Cloning a workspace's repository on the hub side: ``git clone --progress`` with parsed progress.

Credentials never reach the database, logs, events, the process list or ``.git/config``: the URL given to
git has no userinfo, and git asks for it through a throw-away ``GIT_ASKPASS`` script that reads two
environment variables of the git process only.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio

from app.errors import Unprocessable

ProgressCallback = Callable[[dict[str, Any]], Awaitable[None]]
_PROGRESS = re.compile(r"^(?:remote: )?([A-Za-z ]+):\s+(\d+)% \((\d+)/(\d+)\)")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
ASKPASS = (
    "#!/bin/sh\n"
    'case "$1" in\n'
    '  Username*) printf "%s" "$CODEHUB_GIT_USERNAME" ;;\n'
    '  *) printf "%s" "$CODEHUB_GIT_PASSWORD" ;;\n'
    "esac\n"
)


class CloneFailed(Unprocessable):
    """``git clone`` failed; the detail holds git's last message (credentials removed)."""

    default_code = "clone_failed"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(URL without userinfo, user, password) for http(s) URLs; other URLs come back unchanged."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not (parts.username or parts.password):
        return url, None, None
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, unquote(parts.username or ""), unquote(parts.password or "")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret and any URL userinfo replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)


def parse_progress(line: str) -> dict[str, Any] | None:
    """``{"phase", "percent", "current", "total"}`` from one git progress line, or None."""
    match = _PROGRESS.match(line.strip())
    if not match:
        return None
    phase, percent, current, total = match.groups()
    return {"phase": phase.strip(), "percent": int(percent), "current": int(current), "total": int(total)}


def _git_env(user: str | None, password: str | None, askpass: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEHUB_", "GIT_"))}
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"})
    if askpass is not None:
        env.update(
            {"GIT_ASKPASS": str(askpass), "CODEHUB_GIT_USERNAME": user or "", "CODEHUB_GIT_PASSWORD": password or ""}
        )
    return env


async def _run_git(
    argv: list[str], env: dict[str, str], cwd: Path | None, on_line: Callable[[str], Awaitable[None]] | None = None
) -> tuple[int, list[str]]:
    tail: list[str] = []
    process = await anyio.open_process(argv, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE, env=env, cwd=cwd)
    buffer = b""
    assert process.stderr is not None
    async for chunk in process.stderr:
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            tail = [*tail[-19:], line]
            if on_line is not None:
                await on_line(line)
    await process.wait()
    if buffer.strip():
        tail.append(buffer.decode("utf-8", "replace").strip())
    return process.returncode or 0, tail


async def clone(
    url: str,
    dest: Path,
    *,
    ref: str | None = None,
    depth: int | None = None,
    progress: ProgressCallback | None = None,
    time_limit: float = 1800.0,
) -> None:
    """Clone ``url`` into the empty directory ``dest``; raises ``CloneFailed`` (and empties ``dest``)."""
    clean, user, password = split_credentials(url)
    is_sha = bool(ref and _SHA.match(ref))
    argv = ["git", "-c", "credential.helper=", "clone", "--progress", "--no-hardlinks"]
    if depth and not is_sha:
        argv += ["--depth", str(depth)]
    if ref and not is_sha:
        argv += ["--branch", ref]
    argv += ["--", clean, str(dest)]
    last_sent = 0.0
    last_key: tuple[str, int] | None = None

    async def on_line(line: str) -> None:
        nonlocal last_sent, last_key
        parsed = parse_progress(line)
        if parsed is None or progress is None:
            return
        key = (parsed["phase"], parsed["percent"])
        now = time.monotonic()
        if key == last_key or (now - last_sent < 0.25 and parsed["percent"] not in (0, 100)):
            return
        last_sent, last_key = now, key
        await progress(parsed)

    with tempfile.TemporaryDirectory(prefix="codehub-git-") as tmp:
        askpass = None
        if user is not None or password is not None:
            askpass = Path(tmp) / "askpass.sh"
            askpass.write_text(ASKPASS)
            askpass.chmod(stat.S_IRWXU)
        env = _git_env(user, password, askpass)
        await anyio.to_thread.run_sync(lambda: dest.mkdir(parents=True, exist_ok=True))
        code, tail = 1, ["git clone timed out"]
        with anyio.move_on_after(time_limit):
            code, tail = await _run_git(argv, env, None, on_line)
        if code == 0 and is_sha:
            code, tail = await _run_git(["git", "-c", "advice.detachedHead=false", "checkout", ref or ""], env, dest)
    if code != 0:
        await anyio.to_thread.run_sync(_empty_dir, dest)
        message = next((line for line in reversed(tail) if line.startswith(("fatal:", "error:"))), None)
        message = message or (tail[-1] if tail else f"git exited with {code}")
        raise CloneFailed(f"git clone failed: {redact(message, password, user if password else None)}")


def _empty_dir(dest: Path) -> None:
    if not dest.exists():
        return
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
