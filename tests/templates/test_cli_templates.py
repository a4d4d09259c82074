"""``codehub templates …`` through the real console script: create with a secret from the environment,
list, show, update as a new version, versions, refuse bad input in one line, delete; images and pull on Docker."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import sqlalchemy

from tests.support.databases import fresh_database
from tests.support.services import TEST_IMAGE, need_docker

CODEHUB = [sys.executable, "-m", "app"]


def _run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CODEHUB, *args], env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def _env(data_dir: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEHUB_")}
    env.update(
        CODEHUB_DATA_DIR=str(data_dir),
        CODEHUB_DATABASE_URL=url,
        CODEHUB_DOCKER_URL="none",
        CODEHUB_RUNTIME="local",
        CODEHUB_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


def test_templates_commands(tmp_path: Path) -> None:
    secret = f"cli-secret-{secrets.token_hex(8)}"
    with fresh_database("sqlite", tmp_path) as url:
        env = _env(tmp_path / "data", url, DEPLOY_KEY=secret)
        created = _run(
            env,
            "templates",
            "create",
            "node",
            "--image",
            "example.org/node-ide:20",
            "--max-cpu",
            "2",
            "--env",
            "NODE_ENV=development",
            "--secret",
            "DEPLOY_KEY",
            "--label",
            "zone=a",
        )
        assert '"secret_names": [\n    "DEPLOY_KEY"' in created.stdout and secret not in created.stdout
        assert '"NODE_ENV": "development"' in created.stdout
        listed = _run(env, "templates", "list").stdout
        assert "node" in listed and "v1" in listed and "example.org/node-ide:20" in listed

        updated = _run(env, "templates", "update", "node", "--image", "example.org/node-ide:22").stdout
        assert '"version": 2' in updated and '"DEPLOY_KEY"' in updated
        versions = _run(env, "templates", "versions", "node").stdout.splitlines()
        assert [line.split()[0] for line in versions] == ["v2", "v1"]
        assert "node-ide:20" in _run(env, "templates", "show", "node", "--version", "1").stdout

        bad = _run(env, "templates", "create", "bad", "--image", "x/y:1", "--cpu", "4", "--max-cpu", "2", ok=False)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "above max_cpu" in bad.stderr
        bad = _run(env, "templates", "create", "Bad Name", "--image", "x/y:1", ok=False)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1
        missing = {k: v for k, v in env.items() if k != "DEPLOY_KEY"}
        bad = _run(missing, "templates", "update", "node", "--secret", "DEPLOY_KEY", ok=False)
        assert bad.returncode != 0 and "DEPLOY_KEY" in bad.stderr

        assert "deleted" in _run(env, "templates", "delete", "node").stdout
        gone = _run(env, "templates", "show", "node", ok=False)
        assert gone.returncode == 1 and "no template" in gone.stderr
        assert secret.encode() not in Path(url.split("///", 1)[1]).read_bytes()


def test_images_and_pull_on_docker(tmp_path: Path) -> None:
    docker_url = need_docker(TEST_IMAGE)
    with fresh_database("sqlite", tmp_path) as url:
        env = _env(tmp_path / "data", url, CODEHUB_DOCKER_URL=docker_url, CODEHUB_RUNTIME="docker")
        _run(env, "templates", "create", "small", "--image", TEST_IMAGE)
        assert _run(env, "templates", "images", "small").stdout.strip() == ""  # no server registered yet

        engine = sqlalchemy.create_engine(url.replace("+aiosqlite", ""))
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO servers (id, name, docker_url, max_workspaces, labels, is_default, enabled, "
                    "created_at) VALUES ('srvcli1', 'cli-local', :url, 5, '{}', 1, 1, CURRENT_TIMESTAMP)"
                ),
                {"url": docker_url},
            )
        engine.dispose()
        assert "present" in _run(env, "templates", "images", "small").stdout
        pulled = _run(env, "templates", "pull", "small").stdout.splitlines()
        assert pulled[0].startswith("template.pull.started") and pulled[-1].startswith("template.pull.done")


def test_allowed_groups_by_name(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        env = _env(tmp_path / "data", url)
        engine = sqlalchemy.create_engine(url.replace("+aiosqlite", ""))
        with engine.begin() as conn:
            for name, source in (("staff", "local"), ("ops", "local"), ("ops", "oidc")):
                conn.execute(
                    sqlalchemy.text("INSERT INTO groups (name, source, created_at) VALUES (:n, :s, CURRENT_TIMESTAMP)"),
                    {"n": name, "s": source},
                )
            ids = {
                (r.source, r.name): r.id for r in conn.execute(sqlalchemy.text("SELECT id, name, source FROM groups"))
            }
        engine.dispose()

        made = _run(
            env,
            "templates",
            "create",
            "team",
            "--image",
            "x/y:1",
            "--allowed-group",
            "staff",
            "--allowed-group",
            "local:ops",
        )
        view = json.loads(made.stdout)
        assert view["allowed_groups"] == [ids[("local", "staff")], ids[("local", "ops")]]

        bad = _run(env, "templates", "create", "amb", "--image", "x/y:1", "--allowed-group", "ops", ok=False)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1
        assert "local:ops or oidc:ops" in bad.stderr
        bad = _run(env, "templates", "create", "gone", "--image", "x/y:1", "--allowed-group", "nobody", ok=False)
        assert bad.returncode == 1 and "no group 'nobody'" in bad.stderr
        assert "amb" not in _run(env, "templates", "list").stdout

        updated = json.loads(_run(env, "templates", "update", "team", "--allowed-group", "oidc:ops").stdout)
        assert updated["allowed_groups"] == [ids[("oidc", "ops")]] and updated["version"] == 1
        cleared = json.loads(_run(env, "templates", "update", "team", "--any-group").stdout)
        assert cleared["allowed_groups"] == []
        both = _run(env, "templates", "update", "team", "--any-group", "--allowed-group", "staff", ok=False)
        assert both.returncode != 0 and "not both" in both.stderr
