"""Helpers for file and patch tests: tree snapshots, a hostile sandbox, and a quiet git."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SENTINEL = b"SENTINEL: nothing may read or change this\n"


def snapshot(top: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every entry below ``top`` (links not followed): type, and content hash + permissions or target."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = Path(dirpath).relative_to(top)
        if rel_dir.parts and rel_dir.parts[0] in skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            rel = (rel_dir / name).as_posix()
            if rel.split("/")[0] in skip:
                continue
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode & 0o777)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def files_of(top: Path) -> dict[str, tuple[bytes, bool]]:
    """Regular files below ``top`` (not ``.git``): content and executable bit."""
    out: dict[str, tuple[bytes, bool]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            out[path.relative_to(top).as_posix()] = (path.read_bytes(), bool(path.stat().st_mode & 0o100))
    return out


@dataclass
class Sandbox:
    """``top`` holds ``ws`` (the workspace root) and ``outside`` (with a sentinel file)."""

    top: Path
    root: Path
    outside: Path

    def outside_state(self) -> dict[str, tuple[object, ...]]:
        """Everything under ``top`` except the workspace itself."""
        return snapshot(self.top, skip=("ws",))


def make_sandbox(top: Path) -> Sandbox:
    """A workspace full of traps: escaping links, loops, a FIFO, a socket, a device where possible."""
    root = top / "ws"
    outside = top / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SENTINEL)
    (outside / "dir" / "secret.txt").write_bytes(SENTINEL)
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "src" / "deep" / "data.txt").write_text("data\n")
    (root / "README.md").write_text("# readme\n")
    links = {
        "link_out_dir": "../outside",
        "link_abs": str(outside / "secret.txt"),
        "link_abs_dir": str(outside),
        "link_etc": "/etc",
        "link_devnull": "/dev/null",
        "link_in": "src",
        "link_in_file": "src/main.py",
        "link_loop_a": "link_loop_b",
        "link_loop_b": "link_loop_a",
        "link_dotdot": "..",
        "link_self": ".",
        "src/up": "../../outside",
        "src/up_abs": "/",
        "chain_a": "chain_b",
        "chain_b": "src/chain_c",
        "src/chain_c": "../../outside",
        "dangling_out": "../outside/new.txt",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    with contextlib.suppress(OSError):
        os.mknod(root / "chardev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return Sandbox(top, root, outside)


GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(cwd: Path, *args: str, check: bool = True, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git with no user or system configuration."""
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, input=data, capture_output=True, check=check)
