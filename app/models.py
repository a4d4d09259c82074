"""SQLAlchemy models: deployment, users, tokens, identities, groups, servers, templates, workspaces, audit, quotas."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int = 12) -> str:
    """A short random id that is url-safe and a valid DNS label (lowercase letters and digits)."""
    picked: list[str] = []
    while len(picked) < length - 1:  # one getrandom() call per id; bytes >= 252 are dropped so every
        picked += [_ID_ALPHABET[b % 36] for b in secrets.token_bytes(2 * length) if b < 252]  # char is as likely
    return secrets.choice(string.ascii_lowercase) + "".join(picked[: length - 1])


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes; SQLite loses the zone, so values read back are marked UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class WorkspaceState(StrEnum):
    """Where a workspace is in its lifecycle; stored (and sent) as the value."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"  # never stored: the state ``workspace.deleted`` events and the relay report for a gone row


STORED_STATES = tuple(state for state in WorkspaceState if state is not WorkspaceState.DELETED)


class RuntimeKind(StrEnum):
    """The runtimes the hub ships; ``Workspace.runtime`` holds the kind a workspace started on."""

    DOCKER = "docker"
    LOCAL = "local"
    KUBERNETES = "kubernetes"


class StateColumn(TypeDecorator[WorkspaceState]):
    """A ``WorkspaceState`` stored as its plain string value."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Any) -> WorkspaceState | None:
        return None if value is None else WorkspaceState(value)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention so migrations are stable on SQLite and Postgres."""

    metadata = MetaData(naming_convention=NAMING)


class Deployment(Base):
    """This deployment's identity: one row, created with the database (its hub id labels what it owns)."""

    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hub_id: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    """A person (or robot) who owns workspaces."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def is_admin(self) -> bool:
        """True for the admin role."""
        return self.role == "admin"


class ApiToken(Base):
    """An opaque bearer token; only its sha256 is stored. ``kind`` is ``api``, ``session`` or ``workspace`` (the
    cookie of one workspace's host in subdomain mode: ``workspace_id`` names it, ``parent_id`` the token that
    entered, whose revocation ends it too)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    kind: Mapped[str] = mapped_column(String(16), default="api")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    workspace_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)


class WorkspaceTicket(Base):
    """A one-time ticket that lets a browser enter one workspace's host in subdomain mode (sha256 stored), bound
    to the state cookie that host gave the browser (its sha256 too)."""

    __tablename__ = "workspace_tickets"
    __table_args__ = (Index("ix_workspace_tickets_expires_at", "expires_at"),)

    ticket_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workspace_id: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str] = mapped_column(String(16))
    state_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UserIdentity(Base):
    """A user's account at an OpenID provider: the (issuer, subject) pair that signs them in, never the e-mail."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_user_identities_issuer_subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Group(Base):
    """A named group of users; ``source`` is ``oidc`` (synced from the provider at each login) or ``local``."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("source", "name", name="uq_groups_source_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16), default="local")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserGroup(Base):
    """One user's membership of one group."""

    __tablename__ = "user_groups"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True)


class OidcLoginState(Base):
    """A sign-in answer already used: the digest of its ``state``, kept until its login cookie expires (replays
    of the same answer are refused)."""

    __tablename__ = "oidc_login_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Server(Base):
    """Where workspaces can be placed: a Docker engine (``kind="docker"``, ``docker_url``) or a Kubernetes
    namespace (``kind="kubernetes"``, ``kubeconfig``: a file path on the hub or ``in-cluster``, ``namespace``)."""

    __tablename__ = "servers"

    id: Mapped[str] = mapped_column(String(16), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="docker", server_default="docker")
    docker_url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kubeconfig: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    namespace: Mapped[str | None] = mapped_column(String(63), nullable=True)
    max_workspaces: Mapped[int] = mapped_column(Integer, default=50)
    public_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    allowed_groups: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # draining: placed workspaces keep running and starting there, nothing new is placed
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Template(Base):
    """An admin-owned recipe for workspaces; what it runs lives in its versions (``version`` is the newest)."""

    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(16), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_groups: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class TemplateVersion(Base):
    """One immutable version of a template. ``secrets`` maps names to AES-GCM ciphertexts, never clear text."""

    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "version", name="uq_template_versions_template_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(255))
    default_cpu: Mapped[float] = mapped_column(Float)
    max_cpu: Mapped[float] = mapped_column(Float)
    default_memory_mb: Mapped[int] = mapped_column(Integer)
    max_memory_mb: Mapped[int] = mapped_column(Integer)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    secrets: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    command: Mapped[str] = mapped_column(String(2048), default="")
    dotfiles_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    idle_timeout: Mapped[float | None] = mapped_column(Float, nullable=True)
    server_labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Workspace(Base):
    """A workspace record: what to run, where it is placed, and its lifecycle state."""

    __tablename__ = "workspaces"
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_workspaces_owner_name"),
        Index("ix_workspaces_owner_created", "owner_id", "created_at", "id"),
        Index("ix_workspaces_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    state: Mapped[WorkspaceState] = mapped_column(StateColumn, default=WorkspaceState.CREATED)
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    server_id: Mapped[str | None] = mapped_column(
        ForeignKey("servers.id", ondelete="SET NULL"), nullable=True, index=True
    )
    runtime: Mapped[str | None] = mapped_column(String(16), nullable=True)
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    endpoint: Mapped[str | None] = mapped_column(String(255), nullable=True)
    image: Mapped[str] = mapped_column(String(255))
    git_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    git_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    git_depth: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cpu: Mapped[float] = mapped_column(Float, default=1.0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=2048)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_activity_source: Mapped[str | None] = mapped_column(String(32), nullable=True)
    template_id: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    template_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    idle_timeout: Mapped[float | None] = mapped_column(Float, nullable=True)


class WorkspaceGrant(Base):
    """A workspace shared with a user or a group: ``use`` (IDE, terminal, files, exec) or ``view`` (read-only)."""

    __tablename__ = "workspace_grants"
    __table_args__ = (Index("ix_workspace_grants_subject", "subject_kind", "subject_id"),)

    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(8))
    granted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """One audited mutation: hashes and metadata only, never content. Rows are hash-chained."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_at", "actor_id", "at"),
        Index("ix_audit_events_workspace_at", "workspace_id", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    workspace_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    target: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), default="ok")
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Quota(Base):
    """Limits for one subject (``kind`` ``user`` with the user id; ``group`` is reserved for groups).

    A ``None`` limit means no limit of that kind for this subject."""

    __tablename__ = "quotas"

    subject_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_workspaces: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_running: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_cpu: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
