"""Typed settings read from ``CODEHUB_*`` environment variables and validated at start."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

ENV_PREFIX = "CODEHUB_"


@functools.lru_cache(maxsize=16)
def _resolved(path: Path) -> Path:
    """``path.resolve()``, once per path: settings are read on every request and do not change."""
    return path.resolve()


class SettingsError(ValueError):
    """Raised when an environment variable holds a value that does not fit its setting."""


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One setting as shown in ``codehub serve --help`` and the README."""

    env: str
    default: str
    help: str


Seconds = Annotated[float, msgspec.Meta(ge=0)]
WorkspaceEgress = Literal["open", "none"]


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Every setting of the hub. Field docs live in ``SETTING_HELP`` so ``--help`` can print them."""

    data_dir: Path = Path("./.codehub")
    database_url: str = ""
    redis_url: str = ""
    redis_prefix: str = "codehub"
    docker_url: str = "auto"
    runtime: Literal["auto", "docker", "local", "kubernetes"] = "auto"
    kubeconfig: str = ""
    kube_namespace: str = "codehub"
    kube_storage_class: str = ""
    kube_storage_size: str = "10Gi"
    kube_read_only_root: bool = True
    kube_cpu_request_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    default_image: str = "codercom/code-server:latest"
    workspace_mount: str = "/home/coder/project"
    workspaces_dir: str = ""
    local_ide_command: str = "code-server --auth password --bind-addr 127.0.0.1:{port} --disable-telemetry {dir}"
    container_user: str = "auto"
    pull_images: bool = False
    workspace_command: str = ""
    workspace_egress: WorkspaceEgress = "open"
    stop_grace: Seconds = 10.0
    exec_max_timeout: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    exec_max_output_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 4_194_304
    status_cache_ttl: Seconds = 3.0
    reconcile_interval: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    orphan_grace: Seconds = 300.0
    hub_id: str = ""
    workspace_home: str = "/home/coder"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    public_url: str = ""
    allowed_origins: tuple[str, ...] = ()
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout: Seconds = 120.0
    llm_max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 4
    llm_connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    llm_max_tokens: Annotated[int, msgspec.Meta(ge=16)] = 2048
    llm_rate_per_minute: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    llm_rate_burst: Annotated[int, msgspec.Meta(ge=1)] = 10
    llm_context_chars: Annotated[int, msgspec.Meta(ge=1000)] = 24_000
    idle_timeout: Seconds = 1800.0
    idle_warning: Seconds = 300.0
    start_timeout: Seconds = 60.0
    default_cpu: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    max_cpu: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    default_memory_mb: Annotated[int, msgspec.Meta(ge=64)] = 2048
    max_memory_mb: Annotated[int, msgspec.Meta(ge=64)] = 16384
    max_workspaces_per_user: Annotated[int, msgspec.Meta(ge=0)] = 20
    quota_workspaces: Annotated[int, msgspec.Meta(ge=0)] | None = None
    quota_running: Annotated[int, msgspec.Meta(ge=0)] | None = None
    quota_cpu: Annotated[float, msgspec.Meta(ge=0)] | None = None
    quota_memory: Annotated[int, msgspec.Meta(ge=0)] | None = None
    allow_file_git_urls: bool = False
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 10_485_760
    max_tree_entries: Annotated[int, msgspec.Meta(ge=10)] = 10_000
    max_patch_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16_777_216
    max_patch_files: Annotated[int, msgspec.Meta(ge=1)] = 1_000
    max_patch_hunks: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    sse_heartbeat: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    sse_retry_ms: Annotated[int, msgspec.Meta(ge=0)] = 2000
    event_history: Annotated[int, msgspec.Meta(ge=10)] = 10_000
    event_ttl: Seconds = 7 * 24 * 3600.0
    session_ttl: Seconds = 14 * 24 * 3600.0
    cookie_secure: bool = False
    token_cache_ttl: Seconds = 5.0
    admin_path_access: bool = False
    workspace_domain: str = ""
    workspace_cookie_ttl: Annotated[float, msgspec.Meta(ge=60)] = 12 * 3600.0
    workspace_list_cache_ttl: Seconds = 1.0
    presence_ttl: Annotated[float, msgspec.Meta(ge=1)] = 30.0
    admin_username: str = ""
    admin_password: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    metrics_token: str = ""
    secret_key: str = ""
    login_rate_per_minute: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    login_rate_burst: Annotated[int, msgspec.Meta(ge=1)] = 10
    api_rate_per_minute: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    api_rate_burst: Annotated[int, msgspec.Meta(ge=1)] = 300
    password_login: bool = True
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_provider_name: str = ""
    oidc_scopes: tuple[str, ...] = ("openid", "profile", "email")
    oidc_groups_claim: str = "groups"
    oidc_admin_groups: tuple[str, ...] = ()
    oidc_allowed_groups: tuple[str, ...] = ()
    web_assets_dir: str = ""

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'codehub.db').resolve()}"

    @property
    def resolved_workspaces_dir(self) -> Path:
        """Where workspace directories live (a path all Docker servers can bind, in multi-host setups)."""
        return Path(self.workspaces_dir) if self.workspaces_dir else _resolved(self.data_dir / "workspaces")


SETTING_HELP: dict[str, str] = {
    "data_dir": "Directory for the SQLite database, workspace files and other state.",
    "database_url": "SQLAlchemy URL; empty = SQLite in the data dir. Postgres: postgresql+psycopg://user@host/db",
    "redis_url": "redis://host:6379/0 for cross-process events, cache and rate limits; empty = in-process.",
    "redis_prefix": "Prefix of every Redis key and channel this hub uses.",
    "docker_url": "Default Docker engine: auto (local socket when it answers), none, unix://… or tcp://….",
    "runtime": "auto (Docker when an engine answers, else local processes), docker, local, or kubernetes (the "
    "cluster of CODEHUB_KUBECONFIG, namespace CODEHUB_KUBE_NAMESPACE).",
    "kubeconfig": "Kubeconfig file of the Kubernetes cluster workspaces run on (CODEHUB_RUNTIME=kubernetes), or "
    "in-cluster for the hub pod's service account.",
    "kube_namespace": "Namespace of the workspace pods, claims and network policies.",
    "kube_storage_class": "StorageClass of the workspace home claims (WaitForFirstConsumer works); empty = the "
    "cluster's default class.",
    "kube_storage_size": "Size each workspace home claim requests (a Kubernetes quantity such as 10Gi).",
    "kube_read_only_root": "Run workspace pods with a read-only root filesystem (home and /tmp stay writable); off "
    "for images that write elsewhere.",
    "kube_cpu_request_ratio": "Share of a workspace's CPU limit its pod requests (1 = Guaranteed QoS; lower packs "
    "mostly idle IDEs on fewer nodes).",
    "default_image": "Image for new workspaces.",
    "workspace_mount": "Mount point of a bind-mounted workspace directory inside the container (Docker workspaces "
    "keep their files in a home volume instead, the project at <home>/project).",
    "workspaces_dir": "Host directory holding the local runtime's workspace files (Docker workspaces use volumes); "
    "empty = <data dir>/workspaces.",
    "local_ide_command": "IDE command for the local-process runtime; {port} and {dir} are filled in (its IDE "
    "must require the start's secret: see docs/isolation.md).",
    "container_user": "uid:gid workspace containers run as; auto = the hub's (1000:1000 if root); image = image's.",
    "pull_images": "Pull a missing workspace image on start (with progress events); off = fail with a reason.",
    "workspace_command": "Container command (shell words) replacing the image's CMD; empty = image default.",
    "workspace_egress": "Docker workspaces' outbound traffic: open, or none (an internal network: nothing is routed "
    "beyond the engine's host; needs the engine on the hub's machine). Workspaces never reach one another.",
    "stop_grace": "Seconds a stopping IDE gets after SIGTERM before SIGKILL.",
    "exec_max_timeout": "Largest timeout_s an execute request may ask for.",
    "exec_max_output_bytes": "Most output (stdout+stderr bytes) an execute request returns; the rest is cut.",
    "status_cache_ttl": "Seconds a workspace's CPU/memory numbers are cached (Docker stats are slow).",
    "reconcile_interval": "Seconds between reconciliations of the database with the engines.",
    "orphan_grace": "Seconds a labelled container without a workspace lives before it is removed.",
    "hub_id": "Label value marking containers and volumes owned by this hub deployment (codehub.hub); empty = "
    "the random id created with the deployment's database at its first migrate.",
    "workspace_home": "Home directory of the workspace image; Docker workspaces keep it in a volume of their own, "
    "with the project (the files API's root) at <home>/project.",
    "host": "Address `codehub serve` binds.",
    "port": "Port `codehub serve` binds.",
    "public_url": "External URL of the hub (origin checks, links); empty = derived from requests.",
    "allowed_origins": "Comma-separated extra origins trusted for cookie-authenticated writes and WebSocket upgrades.",
    "llm_base_url": "OpenAI-compatible API base URL, e.g. http://vllm:8000/v1; empty = AI disabled.",
    "llm_model": "Model name sent to the LLM server.",
    "llm_api_key": "API key for the LLM server (never logged).",
    "llm_timeout": "Read timeout (s) for LLM streams.",
    "llm_max_concurrency": "Concurrent AI requests allowed per user.",
    "llm_connect_timeout": "Connect timeout (s) to the LLM server; a failed connect is retried once.",
    "llm_max_tokens": "Largest completion (tokens) asked of the LLM server per request.",
    "llm_rate_per_minute": "AI requests per user per minute (token bucket; 0 = unlimited).",
    "llm_rate_burst": "AI requests a user may make back to back before the per-minute rate applies.",
    "llm_context_chars": "Character budget of the code context (selection + related files) sent to the LLM.",
    "idle_timeout": "Seconds without activity before a workspace is stopped (0 = never).",
    "idle_warning": "Seconds before an idle stop that workspace.stop_pending is published.",
    "start_timeout": "Seconds a start may take before the workspace is marked failed.",
    "default_cpu": "CPUs for a workspace when the request names none.",
    "max_cpu": "Largest CPU count a workspace may ask for.",
    "default_memory_mb": "Memory (MiB) for a workspace when the request names none.",
    "max_memory_mb": "Largest memory (MiB) a workspace may ask for.",
    "max_workspaces_per_user": "Workspaces a non-admin user may own (0 = unlimited).",
    "quota_workspaces": "Default quota: workspaces a user may own, unless the user has a quota of their own "
    "(unset = unlimited).",
    "quota_running": "Default quota: workspaces a user may have starting or running at once (unset = unlimited).",
    "quota_cpu": "Default quota: total CPUs of a user's running workspaces (unset = unlimited).",
    "quota_memory": "Default quota: total memory (MiB) of a user's running workspaces (unset = unlimited).",
    "allow_file_git_urls": "Allow file:// git URLs (admins only; for tests and air-gapped mirrors).",
    "max_body_bytes": "Largest JSON request body.",
    "max_file_bytes": "Largest file written or read through the files API.",
    "max_tree_entries": "Most entries one file-tree listing returns (the rest is cut, truncated=true).",
    "max_patch_bytes": "Largest diff accepted by the patch validate/apply API.",
    "max_patch_files": "Most files one diff may touch.",
    "max_patch_hunks": "Most hunks one diff may hold.",
    "sse_heartbeat": "Seconds between SSE heartbeat comments.",
    "sse_retry_ms": "retry: hint sent to SSE clients.",
    "event_history": "Events kept per topic for Last-Event-ID replay.",
    "event_ttl": "Seconds a topic's event history is kept after its last event (0 = kept until trimmed).",
    "session_ttl": "Lifetime (s) of the login session cookie.",
    "presence_ttl": "Seconds another hub process's open connections still count as present after it stops "
    "renewing them (with Redis; a process that dies is forgotten this long after).",
    "cookie_secure": "Mark the session cookie Secure (set behind HTTPS).",
    "admin_path_access": "Let admins open other users' IDEs and terminals in path mode (not isolated: the workspace's "
    "pages run on the hub's origin with the admin's cookie); every opening is logged and audited as impersonation.",
    "workspace_domain": "Subdomain mode: serve each IDE only at <id>.<this domain> and the ports a workspace serves at "
    "<port>--<id>.<this domain> (wildcard DNS and TLS; needs CODEHUB_PUBLIC_URL); empty = path mode (/w/{id}/).",
    "workspace_cookie_ttl": "Lifetime (s) of the cookie a browser gets on a workspace host in subdomain mode.",
    "token_cache_ttl": "Seconds a verified token is cached in-process; revocations reach other processes at once "
    "over Redis, this bounds a lost message.",
    "workspace_list_cache_ttl": "Seconds a GET /api/workspaces page is cached in-process; writes invalidate it at "
    "once, activity timestamps may lag this long (0 disables).",
    "admin_username": "Bootstrap: create this admin at start when no user exists.",
    "admin_password": "Bootstrap: password of that admin.",
    "log_level": "debug, info, warning or error.",
    "log_format": "json (one object per line) or console (human-readable).",
    "metrics_token": "Bearer token GET /metrics requires; empty = /metrics is open (keep it off the internet).",
    "secret_key": "Key (32+ characters) each IDE start's secret is derived from; empty = generated once into "
    "<data dir>/secret_key. Hub processes sharing a database must share it.",
    "login_rate_per_minute": "Login attempts per username and client address per minute (0 = unlimited).",
    "login_rate_burst": "Login attempts allowed back to back before the per-minute rate applies.",
    "api_rate_per_minute": "Authenticated API requests per token per minute (0 = unlimited).",
    "api_rate_burst": "API requests a token may make back to back before the per-minute rate applies.",
    "password_login": "Allow username/password sign-in (API and dashboard); off = single sign-on only, while CLI-made "
    "users and their API tokens keep working (the break-glass admin).",
    "oidc_issuer": "OpenID provider's issuer URL (discovery at <issuer>/.well-known/openid-configuration); empty = "
    "no single sign-on.",
    "oidc_client_id": "The hub's client id at the OpenID provider.",
    "oidc_client_secret": "The hub's client secret at the OpenID provider (never logged); empty = a public client.",
    "oidc_provider_name": "Name on the dashboard's \"Sign in with …\" button; empty = the issuer's host.",
    "oidc_scopes": "Comma-separated scopes asked of the OpenID provider (openid is always asked).",
    "oidc_groups_claim": "Claim (ID token or userinfo) holding the user's groups, synced at every sign-in.",
    "oidc_admin_groups": "Comma-separated provider groups whose members get the admin role (set at every sign-in); "
    "empty = roles are managed in the hub.",
    "oidc_allowed_groups": "Comma-separated provider groups allowed to sign in; empty = every user of the provider.",
    "web_assets_dir": "Directory of the dashboard's npm packages (xterm.js); empty = web/node_modules of the checkout.",
}


def setting_docs() -> list[SettingDoc]:
    """List every setting with its environment variable, default and help text."""
    defaults = Settings()
    docs = []
    for field in msgspec.structs.fields(Settings):
        value = getattr(defaults, field.name)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        docs.append(SettingDoc(ENV_PREFIX + field.name.upper(), shown, SETTING_HELP.get(field.name, "")))
    return docs


def _coerce(name: str, raw: str, annotation: Any) -> Any:
    if "tuple" in str(annotation):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if "bool" in str(annotation) and raw.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
        return raw.lower() in {"1", "true", "yes", "on"}
    return raw


def _decode_path(type_: type, value: Any) -> Any:
    if type_ is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (or ``environ``) plus keyword overrides.

    Raises ``SettingsError`` naming the variable and the problem on any bad value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        key = ENV_PREFIX + field.name.upper()
        if key in env:
            values[field.name] = _coerce(field.name, env[key], field.type)
    values.update(overrides)
    try:
        settings = msgspec.convert(values, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(r"at `\$\.(\w+)", message)
        field_name = match.group(1) if match else ""
        var = ENV_PREFIX + field_name.upper() if field_name else "a CODEHUB_* variable"
        raise SettingsError(f"invalid value for {var}: {message}") from None
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    url = settings.resolved_database_url
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+psycopg://")):
        raise SettingsError(
            "CODEHUB_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+psycopg:// "
            f"(got {url.split('://')[0]}://…)"
        )
    if settings.redis_url and not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("CODEHUB_REDIS_URL must start with redis://, rediss:// or unix://")
    if settings.docker_url not in {"auto", "none", ""} and not settings.docker_url.startswith(
        ("unix://", "tcp://", "http://", "https://")
    ):
        raise SettingsError("CODEHUB_DOCKER_URL must be auto, none, unix://… or tcp://…")
    if settings.runtime == "kubernetes" and not settings.kubeconfig:
        raise SettingsError("CODEHUB_RUNTIME=kubernetes needs CODEHUB_KUBECONFIG (a kubeconfig path, or in-cluster)")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", settings.kube_namespace):
        raise SettingsError("CODEHUB_KUBE_NAMESPACE must be a Kubernetes namespace name (lower-case, digits, '-')")
    if settings.default_cpu > settings.max_cpu:
        raise SettingsError("CODEHUB_DEFAULT_CPU is larger than CODEHUB_MAX_CPU")
    if settings.default_memory_mb > settings.max_memory_mb:
        raise SettingsError("CODEHUB_DEFAULT_MEMORY_MB is larger than CODEHUB_MAX_MEMORY_MB")
    if settings.hub_id and not re.fullmatch(r"[a-zA-Z0-9_.-]{1,63}", settings.hub_id):
        raise SettingsError("CODEHUB_HUB_ID must be 1-63 letters, digits, '.', '_' or '-'")
    if settings.secret_key and len(settings.secret_key) < 32:
        raise SettingsError("CODEHUB_SECRET_KEY must be at least 32 characters")
    if settings.oidc_issuer:
        if len(settings.oidc_issuer) > 255 or not re.fullmatch(r"https?://[^\s?#]+", settings.oidc_issuer):
            raise SettingsError("CODEHUB_OIDC_ISSUER must be an http(s) URL without query or fragment")
        if not settings.oidc_client_id:
            raise SettingsError("CODEHUB_OIDC_CLIENT_ID is required with CODEHUB_OIDC_ISSUER")
        if not settings.oidc_groups_claim:
            raise SettingsError("CODEHUB_OIDC_GROUPS_CLAIM must name a claim")
    _check_workspace_domain(settings)
    for origin in settings.allowed_origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise SettingsError(f"CODEHUB_ALLOWED_ORIGINS entry {origin!r} is not an origin like https://host[:port]")


def _check_workspace_domain(settings: Settings) -> None:
    domain = settings.workspace_domain
    if not domain:
        return
    label = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    if not re.fullmatch(rf"{label}(?:\.{label})+", domain):
        raise SettingsError("CODEHUB_WORKSPACE_DOMAIN must be a lower-case DNS name like ws.example.com")
    if not settings.public_url:
        raise SettingsError("CODEHUB_WORKSPACE_DOMAIN needs CODEHUB_PUBLIC_URL (the hub's own origin)")
    host = (urlsplit(settings.public_url).hostname or "").lower()
    if host == domain or host.endswith("." + domain):
        raise SettingsError("CODEHUB_PUBLIC_URL must not be a host under CODEHUB_WORKSPACE_DOMAIN")
