"""End to end: the real `codehub` console script migrates, creates a user and serves; HTTP does the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli import main
from tests.support.databases import fresh_database
from tests.support.runtime import fake_ide_command
from tests.support.server import free_port

CODEHUB = [sys.executable, "-m", "app"]


def _env(data_dir: Path, db_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(data_dir),
        CODEHUB_DATABASE_URL=db_url,
        CODEHUB_PORT=str(port),
        CODEHUB_DOCKER_URL="none",
        CODEHUB_RUNTIME="local",
        CODEHUB_LOG_LEVEL="warning",
    )
    return env


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_cli_serve_login_token_workspaces(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path, migrate=False) as url:
        port = free_port()
        env = _env(tmp_path / "data", url, port)
        refused = subprocess.run([*CODEHUB, "serve"], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "codehub migrate" in refused.stderr
        subprocess.run([*CODEHUB, "migrate"], env=env, check=True, capture_output=True, timeout=120)
        out = subprocess.run(
            [*CODEHUB, "create-user", "root", "--admin", "--password", "root-password-1"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        admin_token = out.strip().splitlines()[-1]
        assert admin_token.startswith("chub_")
        server = subprocess.Popen([*CODEHUB, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=10) as client:
                r = client.post("/api/auth/login", json={"username": "root", "password": "root-password-1"})
                assert r.status_code == 200
                session = r.json()["token"]
                r = client.post(
                    "/api/auth/tokens", json={"name": "e2e"}, headers={"Authorization": f"Bearer {session}"}
                )
                token = r.json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                ws = client.post("/api/workspaces", json={"name": "e2e"}, headers=auth).json()
                assert client.get(f"/api/workspaces/{ws['id']}", headers=auth).json()["state"] == "created"
                assert client.patch(f"/api/workspaces/{ws['id']}", json={"cpu": 0.5}, headers=auth).json()["cpu"] == 0.5
                assert client.delete(f"/api/workspaces/{ws['id']}", headers=auth).status_code == 204
                assert (
                    client.get("/api/workspaces", headers={"Authorization": f"Bearer {admin_token}"}).json()["items"]
                    == []
                )
            second = subprocess.run(
                [*CODEHUB, "token", "root"], env=env, check=True, capture_output=True, text=True, timeout=60
            ).stdout.strip()
            assert httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {second}"}).status_code == 200
        finally:
            server.terminate()
            logs = server.communicate(timeout=20)[0].decode()
        assert token not in logs and session not in logs


def test_cli_help_lists_settings() -> None:
    out = subprocess.run([*CODEHUB, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for var in (
        "CODEHUB_DATA_DIR",
        "CODEHUB_DATABASE_URL",
        "CODEHUB_REDIS_URL",
        "CODEHUB_DOCKER_URL",
        "CODEHUB_LLM_BASE_URL",
        "CODEHUB_IDLE_TIMEOUT",
        "CODEHUB_ALLOWED_ORIGINS",
    ):
        assert var in out
    for command in ("migrate", "create-user", "token"):
        assert subprocess.run([*CODEHUB, command, "--help"], capture_output=True).returncode == 0


def test_cli_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    env = _env(tmp_path, "sqlite+aiosqlite:///" + str(tmp_path / "x.db"), 1234)
    env["CODEHUB_PORT"] = "not-a-port"
    r = subprocess.run([*CODEHUB, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CODEHUB_PORT" in r.stderr and "Traceback" not in r.stderr


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CODEHUB, *args], env=env, capture_output=True, text=True, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """A failure: non-zero, one line on stderr naming the next step, no trace."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codehub"), r.stderr
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


class InProcess:
    """``codehub`` run in this process (the same ``main`` as the console script, without a new interpreter)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)


def test_cli_errors_before_migrate_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = _env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}", free_port())
    r = _cli(env, "create-user", "root", "--admin")  # the console script itself: no trace
    _one_line_error(r, "codehub migrate")
    assert r.returncode == 2
    for name in [k for k in os.environ if k.startswith("CODEHUB_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("CODEHUB_"):
            monkeypatch.setenv(name, value)
    cli = InProcess(capsys)
    for args in (["token", "root"], ["users", "list"], ["users", "disable", "root"], ["users", "reset-password", "x"]):
        r = cli(*args)
        _one_line_error(r, "codehub migrate")
        assert r.returncode == 2, args
    monkeypatch.setenv("CODEHUB_DATABASE_URL", "postgresql+psycopg://someone:s3cret-pw@127.0.0.1:1/nothing")
    r = cli("users", "list")
    _one_line_error(r, "CODEHUB_DATABASE_URL")
    assert "s3cret-pw" not in r.stderr
    _one_line_error(cli("workspaces", "list"), "CODEHUB_TOKEN", "codehub token")
    r = cli("workspaces", "list", "--token", "chub_x", "--url", f"http://127.0.0.1:{free_port()}")
    _one_line_error(r, "codehub serve")


def test_cli_version_and_short_help() -> None:
    r = subprocess.run([*CODEHUB, "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("codehub ") and r.stdout.split()[1][0].isdigit()
    r = subprocess.run([*CODEHUB, "users", "explode"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "codehub users --help" in r.stderr
    for command in (["users"], ["users", "disable"], ["token"], ["workspaces", "start"], ["migrate"]):
        out = subprocess.run([*CODEHUB, *command, "--help"], capture_output=True, text=True, check=True).stdout
        assert "CODEHUB_DATA_DIR" not in out and len(out.splitlines()) < 25, command


def test_every_command_has_a_short_help() -> None:
    """Each command's ``--help`` is short and leaves the settings list to ``serve --help``."""
    commands = [
        ["create-user"],
        ["token"],
        ["migrate"],
        *(["users", c] for c in ("list", "disable", "enable", "reset-password")),
        *(["workspaces", c] for c in ("list", "start", "stop")),
        ["templates"],
        *(["templates", c] for c in ("list", "show", "versions", "create", "update", "delete", "images", "pull")),
    ]
    for command in commands:
        r = subprocess.run([*CODEHUB, *command, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (command, r.stderr)
        assert "CODEHUB_DATA_DIR" not in r.stdout and len(r.stdout.splitlines()) <= 40, command


def test_cli_users_tokens_and_workspaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        port = free_port()
        env = _env(tmp_path / "data", url, port)
        env.update(CODEHUB_TOKEN_CACHE_TTL="0", CODEHUB_LOCAL_IDE_COMMAND=fake_ide_command())
        for name in [k for k in os.environ if k.startswith("CODEHUB_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("CODEHUB_"):
                monkeypatch.setenv(name, value)
        cli = InProcess(capsys)
        root = cli("create-user", "root", "--admin", "--password", "root-password-1").stdout.split()[-1]
        alice = cli("create-user", "alice").stdout.split()[-1]
        _one_line_error(cli("create-user", "alice"), "codehub token alice")
        listed = cli("users", "list").stdout
        assert "root" in listed and "alice" in listed and "admin" in listed

        # tokens with a lifetime; nonsense lifetimes are refused
        r = cli("token", "alice", "--expires", "2h")
        assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("expires ")
        short_lived = r.stdout.split()[-1]
        for bad in ("0s", "99999d", "tomorrow", "-5m"):
            _one_line_error(cli("token", "alice", f"--expires={bad}"), "30d")
        _one_line_error(cli("token", "alice", "--expires"), "codehub token --help")
        _one_line_error(cli("token", "nobody"), "codehub users list")
        # the last admin cannot be disabled, from the CLI either
        _one_line_error(cli("users", "disable", "root"), "last enabled admin")

        server = subprocess.Popen([*CODEHUB, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            me = httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {short_lived}"})
            assert me.status_code == 200 and me.json()["username"] == "alice"
            ws = httpx.post(
                f"{base}/api/workspaces", json={"name": "cli-ws"}, headers={"Authorization": f"Bearer {alice}"}
            ).json()
            assert ws["id"] in cli("workspaces", "list", "--token", alice).stdout
            assert ws["id"] not in cli("workspaces", "list", "--token", root).stdout  # root's own only
            assert ws["id"] in cli("workspaces", "list", "--all", "--token", root).stdout
            monkeypatch.setenv("CODEHUB_TOKEN", alice)
            r = cli("workspaces", "start", ws["id"], "--wait")
            assert r.returncode == 0 and r.stdout.strip().endswith("running"), r.stdout + r.stderr
            r = cli("workspaces", "stop", "cli-ws")  # by name
            assert r.returncode == 0 and r.stdout.strip().endswith("stopped"), r.stdout + r.stderr
            _one_line_error(cli("workspaces", "start", "nosuchws0001"), "codehub workspaces list")
            _one_line_error(cli("workspaces", "list", "--token", "chub_wrong"), "codehub token")

            assert cli("users", "disable", "alice").returncode == 0
            assert httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {alice}"}).status_code == 401
            _one_line_error(cli("token", "alice"), "codehub users enable alice")
            assert cli("users", "enable", "alice").returncode == 0
            assert httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {alice}"}).status_code == 200

            r = cli("users", "reset-password", "alice")
            new_password = r.stdout.strip().rsplit(": ", 1)[1]
            login = httpx.post(f"{base}/api/auth/login", json={"username": "alice", "password": new_password})
            assert login.status_code == 200
            _one_line_error(cli("users", "reset-password", "alice", "--password", "short"), "8 to 1024")
        finally:
            server.terminate()
            logs = server.communicate(timeout=20)[0].decode()
        assert alice not in logs and new_password not in logs
