"""The local runtime's log files: one ``<iso time> <text>`` line per output line, kept under a size cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from app.services.runtime import local_support as ls
from app.services.runtime.base import LogLine, UnknownWorkspace
from app.services.runtime.common import iso_from_unix

MAX_LOG_FILE = 5 * 1024 * 1024
FOLLOW_FILE_POLL = 0.25


def parse_log_line(raw: bytes) -> LogLine:
    """One stored line back into a ``LogLine``."""
    stamp, _, rest = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
    return LogLine(stamp, rest)


def read_log_file(path: Path) -> list[LogLine]:
    """Every line of a log file (blocking)."""
    with path.open("rb") as handle:
        return [parse_log_line(raw) for raw in handle]


def file_size(path: Path) -> int | None:
    """The file's size, or None when it does not exist (a cheap stat; not worth a thread hop)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def read_from(path: Path, offset: int) -> bytes:
    """Up to ``MAX_LOG_FILE`` bytes of a log file from ``offset`` (blocking)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(MAX_LOG_FILE)


async def follow_log_file(
    workspace_id: str, pid_path: Path, log_path: Path, *, tail: int, since: float | None
) -> AsyncIterator[LogLine]:
    """Follow the log file of an IDE process another hub process (or an earlier one) started."""
    record = ls.read_pidfile(pid_path)
    if record is None or file_size(log_path) is None:
        raise UnknownWorkspace(f"no process for workspace {workspace_id}")
    floor = iso_from_unix(record.started_at if since is None else max(since, record.started_at))
    offset, partial, first = 0, b"", True
    while True:
        size = file_size(log_path) or 0
        if size < offset:  # the writer truncated the file (it keeps it under MAX_LOG_FILE)
            offset, partial = 0, b""
        if size == offset:
            if not ls.alive(record):
                return
            await anyio.sleep(FOLLOW_FILE_POLL)
            continue
        chunk = await anyio.to_thread.run_sync(read_from, log_path, offset)
        offset += len(chunk)
        *raws, partial = (partial + chunk).split(b"\n")
        lines = [line for line in map(parse_log_line, raws) if line.at > floor]
        if first:
            lines, first = lines[-tail:] if tail else [], False
        for line in lines:
            yield line
