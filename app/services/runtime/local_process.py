"""One local IDE process started by this hub process: its output ring, exit, state and resource samples."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from app.services.runtime import local_support as ls
from app.services.runtime.base import LogLine, ResourceStatus, RuntimeState, WorkspaceSpec
from app.services.runtime.common import iso_from_unix
from app.services.runtime.local_logs import MAX_LOG_FILE

CPU_FIRST_SAMPLE_GAP = 0.2


class LocalProcess:
    """A local IDE process started by this hub process."""

    def __init__(self, spec: WorkspaceSpec, process: Any, port: int, log_path: Path, ring: int) -> None:
        self.spec = spec
        self.process = process
        self.port = port
        self.log_path = log_path
        self.lines: deque[LogLine] = deque(maxlen=ring)
        self.written = 0
        self.changed = anyio.Event()
        self.exited = anyio.Event()
        self.started_at = time.time()
        self.cpu_sample: tuple[float, float] | None = None

    def add_line(self, line: LogLine) -> None:
        """Keep one output line and wake every follower."""
        self.lines.append(line)
        self.written += 1
        self.changed.set()
        self.changed = anyio.Event()

    def last_lines(self, count: int = 40) -> list[str]:
        """The last ``count`` output lines' text, for a start failure's report."""
        return [line.text for line in list(self.lines)[-count:]]

    @property
    def exit_code(self) -> int | None:
        """The exit status once the process has exited."""
        return None if self.process.returncode is None else ls.exit_status(self.process.returncode)

    async def pump_output(self) -> None:
        """Read the process's output into the ring and its log file (capped) until it exits."""
        buffer = b""
        with self.log_path.open("ab") as log:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self._log(log, raw)
            if buffer:
                self._log(log, buffer)
        await self.process.wait()
        self.exited.set()
        self.changed.set()

    def _log(self, log: Any, raw: bytes) -> None:
        line = LogLine(iso_from_unix(time.time()), raw.decode("utf-8", "replace").rstrip("\r"))
        self.add_line(line)
        if log.tell() > MAX_LOG_FILE:
            log.seek(0)
            log.truncate()
        log.write(f"{line.at} {line.text}\n".encode())
        log.flush()

    def state(self) -> RuntimeState:
        """What the engine would say of this process."""
        running = not self.exited.is_set()
        return RuntimeState(
            workspace_id=self.spec.id,
            container_id=str(self.process.pid),
            running=running,
            status="running" if running else "exited",
            exit_code=None if running else ls.exit_status(self.process.returncode),
            started_at=iso_from_unix(self.started_at),
            hub_id=self.spec.hub_id,
            owner=self.spec.owner,
        )

    async def sample_status(self) -> ResourceStatus:
        """CPU % since the last sample (two samples apart on the first call), resident memory, process count."""
        cpu, rss, pids = await anyio.to_thread.run_sync(ls.sample_session, self.process.pid)
        now = time.monotonic()
        previous = self.cpu_sample
        if previous is None:
            await anyio.sleep(CPU_FIRST_SAMPLE_GAP)
            previous = (cpu, now)
            cpu, rss, pids = await anyio.to_thread.run_sync(ls.sample_session, self.process.pid)
            now = time.monotonic()
        self.cpu_sample = (cpu, now)
        elapsed = now - previous[1]
        percent = max(0.0, (cpu - previous[0]) / elapsed * 100) if elapsed > 0 else 0.0
        return ResourceStatus(
            cpu_percent=round(percent, 2),
            memory_used_bytes=rss,
            memory_limit_bytes=ls.memory_total(),
            pids=pids,
            sampled_at=iso_from_unix(time.time()),
        )

    async def follow(self) -> AsyncIterator[LogLine]:
        """Lines written from now on, until the process exits."""
        seen = self.written
        while True:
            changed = self.changed
            if self.written > seen:
                fresh = list(self.lines)[-min(self.written - seen, len(self.lines)) :]
                seen = self.written
                for line in fresh:
                    yield line
                continue
            if self.exited.is_set():
                return
            await changed.wait()
