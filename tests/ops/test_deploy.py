"""Static checks of what ships for deployment (no registry is reachable here, so nothing is built or pulled):
docker-compose.yml, the Dockerfile and its entrypoint, the Grafana dashboard and the Prometheus alert rules."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser
from app.settings import ENV_PREFIX, Settings, load_settings
from tests.support.promtext import PROMETHEUS_SYNTHETIC, balanced, exposed_names, metric_names_in
from tests.support.server import Hub

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_ENV = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} with an empty environment (required ones get a dummy)."""

    def one(match: re.Match[str]) -> str:
        op, word = match.group(2), match.group(3) or ""
        if op and op.endswith("?"):
            return "dummy0"
        return word if op and op.endswith("-") else ""

    return _INTERPOLATION.sub(one, value)


def _entrypoint_commands() -> list[list[str]]:
    lines = (ROOT / "deploy" / "entrypoint.sh").read_text().splitlines()
    commands = []
    for line in lines:
        if not line.strip().startswith(("codehub ", "exec codehub ")):
            continue
        words = shlex.split(line, comments=True)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:1] == ["codehub"]:
            commands.append([w for w in words[1:] if w != '"$@"' and w != "$@"])
    return commands


def test_compose_services_and_keys() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"hub", "postgres", "redis"}
    allowed = {
        "build",
        "image",
        "restart",
        "network_mode",
        "depends_on",
        "group_add",
        "environment",
        "volumes",
        "healthcheck",
        "ports",
        "command",
    }
    for name, service in compose["services"].items():
        assert set(service) <= allowed, (name, set(service) - allowed)
        assert {"test", "interval", "timeout", "retries"} <= set(service["healthcheck"]), name
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    assert compose["services"]["postgres"]["image"].split(":")[1].startswith("17")
    assert compose["services"]["redis"]["image"].split(":")[1].startswith("7")
    hub = compose["services"]["hub"]
    assert hub["build"]["context"] == "." and (ROOT / hub["build"]["dockerfile"]).is_file()
    for dependency, condition in hub["depends_on"].items():
        assert dependency in compose["services"] and condition == {"condition": "service_healthy"}
    assert "ports" not in hub or hub.get("network_mode") != "host"  # published ports mean nothing on the host network


def test_compose_env_is_real_settings_and_loads() -> None:
    hub = _compose()["services"]["hub"]
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\b(CODEHUB_[A-Z0-9_]+)\b", text))
    assert used <= SETTINGS_ENV, f"not settings: {sorted(used - SETTINGS_ENV)}"
    env = {key: _interpolate(str(value)) for key, value in hub["environment"].items()}
    assert set(env) <= SETTINGS_ENV
    settings = load_settings(environ=env)  # validates every value (URLs, booleans, numbers)
    assert settings.database_url.startswith("postgresql+psycopg://") and settings.redis_url.startswith("redis://")
    assert settings.admin_username and settings.admin_password
    assert str(settings.data_dir) == "/data"


def test_compose_volumes_and_ports_are_consistent() -> None:
    compose = _compose()
    hub = compose["services"]["hub"]
    env = {key: _interpolate(str(value)) for key, value in hub["environment"].items()}
    named = set(compose["volumes"])
    mounts = {}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target = _interpolate(volume).split(":")[:2]
            if not source.startswith("/"):
                assert source in named, f"volume {source} is not declared"
            if service is hub:
                mounts[target] = source
    assert mounts[env["CODEHUB_DATA_DIR"]] in named
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    workspaces = env["CODEHUB_WORKSPACES_DIR"]
    assert workspaces.startswith("/") and mounts[workspaces] == workspaces  # same path inside and outside
    probe = " ".join(hub["healthcheck"]["test"])
    assert "/ready" in probe or "/health" in probe
    assert "CODEHUB_PORT" in probe and env["CODEHUB_PORT"] == "8000"
    db_port = re.search(r"@127\.0\.0\.1:(\d+)/", env["CODEHUB_DATABASE_URL"]).group(1)  # type: ignore[union-attr]
    redis_port = re.search(r":(\d+)/\d+$", env["CODEHUB_REDIS_URL"]).group(1)  # type: ignore[union-attr]
    assert _interpolate(compose["services"]["postgres"]["ports"][0]) == f"127.0.0.1:{db_port}:5432"
    assert _interpolate(compose["services"]["redis"]["ports"][0]) == f"127.0.0.1:{redis_port}:6379"
    assert (
        compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
        in hub["environment"]["CODEHUB_DATABASE_URL"]
    )


def test_dockerfile_and_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n", " ", text).splitlines()]
    instructions = [i for i in instructions if i and not i[0].startswith("#")]
    keywords = [i[0] for i in instructions]
    stages = [i[1] for i in instructions if i[0] == "FROM"]
    assert stages[-1] == "python:3.13-slim", "the hub runs from the last stage; earlier stages only build assets"
    users = [i[1].strip() for i in instructions if i[0] == "USER"]
    assert (
        users
        and users[-1] not in {"root", "0"}
        and keywords.index("USER") > max(n for n, k in enumerate(keywords) if k == "RUN")
    ), "the last RUN must happen before switching to the non-root user"
    assert "uv sync --frozen --no-dev" in text and "uv.lock" in text
    for instruction in instructions:
        if instruction[0] == "COPY" and not instruction[1].startswith("--from="):
            source = instruction[1].split()[0]
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
    entrypoint = json.loads(next(i[1] for i in instructions if i[0] == "ENTRYPOINT"))
    assert entrypoint == ["codehub-entrypoint"] and "deploy/entrypoint.sh /usr/local/bin/codehub-entrypoint" in text
    script = ROOT / "deploy" / "entrypoint.sh"
    assert script.stat().st_mode & 0o111 and script.read_text().startswith("#!/bin/sh")
    commands = _entrypoint_commands()
    assert [c[0] for c in commands] == ["migrate", "serve"]
    for command in commands:
        args = build_parser().parse_args(command)  # the real CLI accepts it
        assert args.command == command[0]
    assert build_parser().parse_args(commands[1]).host == "0.0.0.0"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env"} <= set(ignored)


# -- Grafana dashboard and alert rules: every metric they query exists in /metrics -----------------------


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]
    return exprs


def _alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    out = [rule for group in rules["groups"] for rule in group["rules"]]
    for rule in out:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["labels"]["severity"] in {"warning", "critical"}
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m")), rule["alert"]
        assert rule["annotations"]["summary"]
    names = [rule["alert"] for rule in out]
    assert len(names) == len(set(names))
    return out


@pytest.mark.anyio
async def test_dashboard_and_alerts_query_only_exposed_metrics(hub: Hub) -> None:
    async with hub.client() as client:  # exercise a few routes first
        await client.post("/api/workspaces", json={"name": "dash"})
        await client.get("/api/workspaces")
        text = (await client.get("/metrics")).text
    known = exposed_names(text) | PROMETHEUS_SYNTHETIC
    rules = _alert_rules()
    exprs = _dashboard_exprs() + [rule["expr"] for rule in rules]
    assert len(exprs) > 30
    for expr in exprs:
        assert balanced(expr), expr
        missing = metric_names_in(expr) - known
        assert not missing, f"{sorted(missing)} in {expr!r} are not exposed by /metrics"
    alerts = {rule["alert"]: rule["expr"] for rule in rules}
    assert any("codehub_http_request_duration_seconds_bucket" in e and "0.95" in e for e in alerts.values())
    assert any('status=~"5.."' in e for e in alerts.values())
    assert any('name="database"' in e for e in alerts.values())
    assert any('name="redis"' in e for e in alerts.values())


def test_metrics_service_has_no_litestar_import() -> None:
    for module in ("app/metrics.py", "app/services/auth/ratelimit.py", "app/services/workspaces/monitoring.py"):
        assert "litestar" not in (ROOT / module).read_text(), module


def test_unknown_metric_names_are_caught() -> None:
    assert metric_names_in('rate(codehub_nope_total{job="x"}[5m])') == {"codehub_nope_total"}
    assert metric_names_in('sum by (le) (rate(foo_bucket{a="b"}[5m])) > 1 and up == 0') == {"foo_bucket"}
    assert not balanced("sum(rate(x[5m])")
