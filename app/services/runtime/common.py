"""Helpers shared by the runtimes: IDE readiness, capped exec output, ownership of workspace files."""

from __future__ import annotations

import codecs
import functools
import os
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from app.services.runtime.base import ExecExit, ExecItem, ExecOutput, ExecResult

READY_PATH = "/healthz"
READY_INTERVAL = 0.05  # the longest pause between two readiness probes
READY_FIRST_INTERVAL = 0.005  # the first pause; each next one is READY_BACKOFF times longer, up to READY_INTERVAL
READY_BACKOFF = 1.5


class ProcessExited(Exception):
    """The IDE exited while the hub waited for it to answer."""


async def concurrently(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` at once; their results in order. The first to fail cancels the others and its
    exception is raised as itself (not in an exception group), so callers catch it as if awaited alone."""
    results: list[Any] = [None] * len(calls)
    failures: list[BaseException] = []

    async def run(index: int, call: Callable[[], Awaitable[Any]], scope: anyio.CancelScope) -> None:
        try:
            results[index] = await call()
        except Exception as exc:
            failures.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(run, index, call, tg.cancel_scope)
    if failures:
        raise failures[0]
    return results


@functools.cache
def _probe_tls() -> ssl.SSLContext:
    """One TLS context for every probe client: building one loads the CA bundle (tens of ms of CPU on the
    event loop) and httpx builds one per client unless given one. Probes speak plain HTTP to the IDE."""
    return ssl.create_default_context()


def probe_client(limit: float) -> httpx.AsyncClient:
    """An HTTP client for readiness and health probes (no proxies from the environment, shared TLS context)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(limit), trust_env=False, verify=_probe_tls())


async def wait_until_ready(
    url: str, *, within: float, alive: Callable[[], Awaitable[bool]], alive_every: float = 0.5
) -> None:
    """Poll ``url`` + ``/healthz`` until any HTTP response arrives.

    Probes start 5 ms apart and back off to ``READY_INTERVAL``: an IDE that answers within a few
    milliseconds of its container starting is seen then, not at the next 50 ms tick, and a slow one costs
    no more probes than before. Raises ``TimeoutError`` after ``within`` seconds and ``ProcessExited`` as
    soon as ``alive()`` says the process is gone (checked every ``alive_every`` seconds, since it may cost
    an engine call).
    """
    deadline = time.monotonic() + within
    next_alive = time.monotonic() + alive_every
    pause = READY_FIRST_INTERVAL
    async with probe_client(2.0) as client:
        while True:
            try:
                await client.get(url + READY_PATH)
                return
            except httpx.TransportError:
                pass
            now = time.monotonic()
            if now >= next_alive:
                if not await alive():
                    raise ProcessExited
                next_alive = now + alive_every
            if now >= deadline:
                raise TimeoutError
            await anyio.sleep(pause)
            pause = min(pause * READY_BACKOFF, READY_INTERVAL)


async def ide_healthy(url: str, *, limit: float = 2.0) -> bool:
    """True when the IDE answers HTTP on ``/healthz`` (any status)."""
    async with probe_client(limit) as client:
        try:
            await client.get(url + READY_PATH)
            return True
        except httpx.TransportError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class OutputCap:
    """Splits command output into decoded chunks while keeping the total under a byte cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.truncated = False
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}

    def feed(self, stream: str, data: bytes) -> str:
        """Decoded part of ``data`` that still fits under the cap ("" when none does)."""
        room = self.limit - self.used
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated = True
        self.used += len(data)
        return self._decoders[stream].decode(data) if data else ""

    def flush(self, stream: str) -> str:
        """Characters held back waiting for the rest of a multi-byte sequence."""
        return self._decoders[stream].decode(b"", final=True)


async def collect_exec(items: AsyncIterator[ExecItem]) -> ExecResult:
    """Drain an exec stream into one result."""
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    async for item in items:
        if isinstance(item, ExecOutput):
            out[item.stream].append(item.data)
        elif isinstance(item, ExecExit):
            return ExecResult(
                exit_code=item.exit_code,
                stdout="".join(out["stdout"]),
                stderr="".join(out["stderr"]),
                duration_ms=item.duration_ms,
                truncated=item.truncated,
                timed_out=item.timed_out,
            )
    raise RuntimeError("exec stream ended without an exit")


def iso_from_unix(value: float) -> str:
    """RFC 3339 UTC timestamp of a UNIX time."""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unix_from_iso(value: str) -> float:
    """UNIX time of an RFC 3339 timestamp (nanoseconds cut to microseconds)."""
    text = value.strip().replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return datetime.fromisoformat(text).timestamp()


def resolve_container_user(setting: str) -> tuple[int, int] | None:
    """The uid:gid workspace containers run as, or None to keep the image's own user.

    ``auto``: the hub's own uid:gid, so files written in the container belong to the hub; a hub running
    as root uses 1000:1000 (the usual IDE user, e.g. code-server's ``coder``) and hands the workspace
    directory to it. ``image``: keep the image's user. ``uid:gid``: exactly that.
    """
    if setting == "image":
        return None
    if setting in ("", "auto"):
        uid, gid = os.getuid(), os.getgid()
        return (1000, 1000) if uid == 0 else (uid, gid)
    uid_text, _, gid_text = setting.partition(":")
    return int(uid_text), int(gid_text or uid_text)


def prepare_workspace_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Create the workspace directory; as root, hand it (recursively, the first time) to ``owner``."""
    path.mkdir(parents=True, exist_ok=True)
    if owner is None or os.getuid() != 0:
        return
    uid, gid = owner
    stat = path.stat()
    if (stat.st_uid, stat.st_gid) == (uid, gid):
        return
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def purge_dir(path: Path) -> None:
    """Delete a workspace directory and everything in it (missing is fine)."""
    shutil.rmtree(path, ignore_errors=True)
