"""Request and response bodies of the spine's API (msgspec Structs; unknown fields are refused)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.models import ApiToken, User, Workspace

DnsLabel = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="DNS label: lower-case letters, digits and '-', 1-63 characters",
    ),
]
ImageRef = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")]
GitUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
GitRef = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._/-]+$")]
ShortId = Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=r"^[a-z0-9]+$")]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are a 4xx, not silently ignored."""


class ErrorBody(msgspec.Struct):
    """Every error response."""

    error: str
    detail: str


class LoginRequest(Body):
    """Credentials for ``POST /api/auth/login``, and where the browser was going (``next``)."""

    username: Annotated[str, msgspec.Meta(max_length=256)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    next: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class UserOut(msgspec.Struct):
    """A user as shown by the API (never the password hash)."""

    id: int
    username: str
    role: str
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        """Shape a model row."""
        return cls(user.id, user.username, user.role, user.disabled, user.created_at)


class LoginResponse(msgspec.Struct):
    """A session token (also set as the ``codehub_session`` cookie), who it belongs to, and where the browser
    goes next (the request's ``next`` when it is a path on the hub's own origin, else ``/``)."""

    token: str
    user: UserOut
    expires_at: datetime | None
    next: str = "/"


class TokenCreate(Body):
    """A new API token: a name and an optional lifetime in days."""

    name: Annotated[str, msgspec.Meta(max_length=100)] = ""
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class TokenOut(msgspec.Struct):
    """A token's metadata; ``token`` holds the raw value only in the create response."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    token: str | None = None

    @classmethod
    def of(cls, token: ApiToken, raw: str | None = None) -> TokenOut:
        """Shape a model row."""
        return cls(token.id, token.name, token.prefix, token.created_at, token.expires_at, token.last_used_at, raw)


class UserCreate(Body):
    """An admin creating a user."""

    username: Annotated[str, msgspec.Meta(max_length=64)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    role: Literal["admin", "user"] = "user"


class UserUpdate(Body):
    """An admin changing a user; absent fields stay as they are."""

    role: Literal["admin", "user"] | None = None
    disabled: bool | None = None
    password: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


class WorkspaceCreate(Body):
    """A new workspace record."""

    name: DnsLabel
    image: ImageRef | None = None
    git_url: GitUrl | None = None
    git_ref: GitRef | None = None
    git_depth: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    server_id: ShortId | None = None
    cpu: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=64)] | None = None
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")] | None = None
    """A template's id or name: image, resources' defaults and bounds, environment and command come from its
    newest version (``image`` may then not be given)."""


class WorkspaceUpdate(Body):
    """Changes to a workspace record; image and resources apply at the next start. The repository (``git_url``,
    ``git_ref``) changes only while the workspace is not running and its files hold no clone; it is cloned now."""

    name: DnsLabel | None = None
    image: ImageRef | None = None
    git_url: GitUrl | None = None
    git_ref: GitRef | None = None
    cpu: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=64)] | None = None


class WorkspaceOut(msgspec.Struct):
    """A workspace as shown by the API."""

    id: str
    name: str
    owner_id: int
    state: str
    state_reason: str | None
    server_id: str | None
    image: str
    git_url: str | None
    git_ref: str | None
    cpu: float
    memory_mb: int
    url: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    last_activity_at: datetime | None
    last_activity_source: str | None
    template_id: str | None
    template_version: int | None

    @classmethod
    def of_rows(cls, rows: Sequence[Any]) -> list[WorkspaceOut]:
        """Shape plain result rows of the ``workspaces`` columns (``WorkspaceService.list``) by position:
        a few times faster than attribute access on each row of a 50-row page."""
        if not rows:
            return []
        keys = list(rows[0]._fields)
        positions = [keys.index(name) if name != "url" else -1 for name in cls.__struct_fields__]
        id_at = keys.index("id")
        shaped = []
        for row in rows:
            values: list[Any] = [row[i] if i >= 0 else f"/w/{row[id_at]}/" for i in positions]
            shaped.append(cls(*values))
        return shaped

    @classmethod
    def of(cls, ws: Workspace) -> WorkspaceOut:
        """Shape a model row."""
        return cls(
            ws.id,
            ws.name,
            ws.owner_id,
            ws.state,
            ws.state_reason,
            ws.server_id,
            ws.image,
            ws.git_url,
            ws.git_ref,
            ws.cpu,
            ws.memory_mb,
            f"/w/{ws.id}/",
            ws.created_at,
            ws.updated_at,
            ws.started_at,
            ws.stopped_at,
            ws.last_activity_at,
            ws.last_activity_source,
            ws.template_id,
            ws.template_version,
        )


class WorkspacePage(msgspec.Struct):
    """One page of workspaces; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[WorkspaceOut]
    next_cursor: str | None


class CheckResult(msgspec.Struct):
    """One readiness check."""

    name: str
    ok: bool
    latency_ms: float
    error: str | None = None


class EngineStatus(msgspec.Struct):
    """One engine in ``GET /ready``: a registered server's Docker engine or a hub-wide runtime."""

    name: str
    kind: str
    ok: bool
    required: bool
    latency_ms: float
    server_id: str | None = None
    version: str = ""
    api_version: str = ""
    error: str | None = None


class ReadyResponse(msgspec.Struct):
    """``GET /ready``: every check, every engine, the engines that are down and the overall verdict.

    ``ok`` is false when a dependency check fails or a ``required`` engine (where new workspaces go by
    default) is down; another server being down only puts its name in ``down``.
    """

    ok: bool
    checks: list[CheckResult]
    engines: list[EngineStatus] = []
    down: list[str] = []
    warnings: list[str] = []
