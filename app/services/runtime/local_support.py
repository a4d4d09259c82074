"""Process-level helpers for the local runtime: /proc sampling, process groups, pid files, a pty shell."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HIDDEN_ENV_PREFIXES = ("CODEHUB_",)


class PidFile(msgspec.Struct, frozen=True, kw_only=True):
    """What survives a hub restart about a local IDE process."""

    workspace_id: str
    pid: int
    start_ticks: int
    port: int
    hub_id: str
    owner: str
    workspace_dir: str
    started_at: float


def read_pidfile(path: Path) -> PidFile | None:
    """The pid file at ``path``, or None when missing or unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=PidFile)
    except (OSError, msgspec.DecodeError):
        return None


def write_pidfile(path: Path, record: PidFile) -> None:
    """Write atomically (rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(record))
    tmp.replace(path)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ")".
    return raw[raw.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (identifies a pid across reuse)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def alive(record: PidFile) -> bool:
    """True when the process of ``record`` still runs (same pid and start time, not a zombie)."""
    fields = _stat_fields(record.pid)
    return fields is not None and bool(fields) and fields[0] != "Z" and int(fields[19]) == record.start_ticks


def session_members(sid: int) -> list[int]:
    """Pids of every live process in session ``sid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def sample_session(sid: int) -> tuple[float, int, int]:
    """(CPU seconds used, resident bytes, process count) of a session."""
    cpu = 0.0
    rss = 0
    pids = 0
    for pid in session_members(sid):
        fields = _stat_fields(pid)
        if not fields:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss += int(fields[21]) * PAGE_SIZE
        pids += 1
    return cpu, rss, pids


def memory_total() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when it is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` lives (zombies excluded)."""
    return bool(session_members(pgid))


async def terminate_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        await anyio.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The hub's environment minus its own secrets (``CODEHUB_*``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(HIDDEN_ENV_PREFIXES)}
    env.update(extra)
    return env


def exit_status(returncode: int | None) -> int | None:
    """Shell-style exit status: killed by signal N → 128 + N."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


# anyio.open_process has no preexec_fn: a tiny Python shim makes the pty the controlling terminal
# (login_tty = setsid + TIOCSCTTY + dup to 0/1/2) and then becomes the shell (same pid).
_LOGIN_TTY = "import os, sys; os.login_tty(0); os.execvp(sys.argv[1], sys.argv[1:])"


class PtyTerminal:
    """A shell on a pseudo-terminal, for the local runtime."""

    def __init__(self, process: Any, master: int) -> None:
        self._process = process
        self._master = master
        self.closed = False

    @classmethod
    async def spawn(cls, argv: list[str], *, cwd: str, env: dict[str, str], cols: int, rows: int) -> PtyTerminal:
        """Start ``argv`` as session leader with the pty as its controlling terminal."""
        master, slave = os.openpty()
        _set_size(master, cols, rows)
        try:
            process = await anyio.open_process(
                [sys.executable, "-c", _LOGIN_TTY, *argv], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(process, master)

    async def send(self, data: bytes) -> None:
        """Write keystrokes."""
        view = memoryview(data)
        while view:
            await anyio.wait_writable(self._master)
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                continue
            view = view[written:]

    async def receive(self) -> bytes:
        """Next output bytes; ``b""`` once the shell has exited."""
        while not self.closed:
            try:
                await anyio.wait_readable(self._master)
            except (anyio.ClosedResourceError, OSError):
                return b""
            try:
                return os.read(self._master, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: every slave side is closed
                return b""
        return b""

    async def resize(self, cols: int, rows: int) -> None:
        """Change the window size (the shell gets SIGWINCH)."""
        _set_size(self._master, cols, rows)

    async def exit_code(self) -> int | None:
        """The shell's exit status once it has exited."""
        return exit_status(self._process.returncode)

    async def close(self) -> None:
        """Hang up the session and release the pty."""
        if self.closed:
            return
        self.closed = True
        signal_group(self._process.pid, signal.SIGHUP)
        anyio.notify_closing(self._master)
        os.close(self._master)
        with anyio.move_on_after(2, shield=True):
            await self._process.wait()
        if self._process.returncode is None:
            signal_group(self._process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await self._process.aclose()


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
