"""Serve git repositories over smart HTTP on loopback (``git http-backend`` as CGI), for clone tests.

Paths under ``/private/`` need HTTP Basic auth with the given user and password; every Authorization
header received is recorded so tests can check how credentials travelled.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def make_repo(root: Path, name: str, *, branches: dict[str, dict[str, str]]) -> Path:
    """A bare repository ``root/name`` with one commit per file on each branch (first branch: main)."""
    work = root / f"{name}-work"
    bare = root / name
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    work.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    for index, (branch, files) in enumerate(branches.items()):
        if index:
            git("checkout", "-q", "-b", branch)
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
            git("add", path)
            git("commit", "-q", "-m", f"{branch}: {path}")
    git("checkout", "-q", "main")
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare


class GitHTTPServer(ThreadingHTTPServer):
    """The server; ``authorizations`` lists every Authorization header seen."""

    daemon_threads = True

    def __init__(self, root: Path, user: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.user = user
        self.password = password
        self.authorizations: list[str] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: GitHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _cgi(self) -> None:
        parts = urlsplit(self.path)
        self.server.paths.append(parts.path)
        auth = self.headers.get("Authorization", "")
        if auth:
            self.server.authorizations.append(auth)
        path = parts.path
        if path.startswith("/private/"):
            expected = "Basic " + base64.b64encode(f"{self.server.user}:{self.server.password}".encode()).decode()
            if auth != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = path.removeprefix("/private")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _cgi
    do_POST = _cgi


@contextmanager
def serve_git(root: Path, *, user: str = "alice", password: str = "s3cret-Pa55") -> Iterator[GitHTTPServer]:
    """Serve ``root`` (holding bare repositories) until the block ends."""
    server = GitHTTPServer(root, user, password)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
