"""What an admin sends to create or change a template, and the checks msgspec's types cannot express."""

from __future__ import annotations

import shlex
from typing import Annotated

import msgspec

from app.errors import Unprocessable

TemplateName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="lower-case letters, digits and '-', 1-63 characters",
    ),
]
Image = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")]
EnvName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, msgspec.Meta(max_length=8192)]
Cpu = Annotated[float, msgspec.Meta(gt=0)]
MemoryMb = Annotated[int, msgspec.Meta(ge=64)]
LabelKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
LabelValue = Annotated[str, msgspec.Meta(max_length=255)]
Description = Annotated[str, msgspec.Meta(max_length=500)]
Command = Annotated[str, msgspec.Meta(max_length=2048)]
GitUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
IdleTimeout = Annotated[float, msgspec.Meta(ge=0)]
Env = Annotated[dict[EnvName, EnvValue], msgspec.Meta(max_length=100)]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=20)]
GroupIds = Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]], msgspec.Meta(max_length=100)]

RESERVED_PREFIXES = ("CODEHUB_",)
RESERVED_NAMES = frozenset({"HASHED_PASSWORD", "PASSWORD"})


class TemplateDraft(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A new template. Resources left out take the hub's defaults and limits; secrets are write-only."""

    name: TemplateName
    description: Description = ""
    image: Image
    default_cpu: Cpu | None = None
    max_cpu: Cpu | None = None
    default_memory_mb: MemoryMb | None = None
    max_memory_mb: MemoryMb | None = None
    env: Env = msgspec.field(default_factory=dict)
    secrets: Env = msgspec.field(default_factory=dict)
    command: Command = ""
    dotfiles_url: GitUrl | None = None
    idle_timeout: IdleTimeout | None = None
    server_labels: Labels = msgspec.field(default_factory=dict)
    allowed_groups: GroupIds = msgspec.field(default_factory=list)


class TemplateChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Changes to a template: any field but ``name``/``description``/``allowed_groups`` makes a new version.

    Absent fields carry over. ``allowed_groups`` (who may use the template: kept on the template row, not a
    version) replaces the old list. ``env`` and ``server_labels`` replace the old maps; ``secrets`` sets the
    values it names (others are kept) and ``remove_secrets`` drops names.
    ``dotfiles_url``/``idle_timeout`` set to "" / -1 clear them.
    """

    name: TemplateName | None = None
    description: Description | None = None
    image: Image | None = None
    default_cpu: Cpu | None = None
    max_cpu: Cpu | None = None
    default_memory_mb: MemoryMb | None = None
    max_memory_mb: MemoryMb | None = None
    env: Env | None = None
    secrets: Env | None = None
    remove_secrets: Annotated[list[EnvName], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    command: Command | None = None
    dotfiles_url: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    idle_timeout: Annotated[float, msgspec.Meta(ge=-1)] | None = None
    server_labels: Labels | None = None
    allowed_groups: GroupIds | None = None

    def makes_version(self) -> bool:
        """True when the change touches what workspaces run (not only the name or description)."""
        fields = set(self.__struct_fields__) - {"name", "description", "remove_secrets", "allowed_groups"}
        return bool(self.remove_secrets) or any(getattr(self, f) is not None for f in fields)


def check_variables(env: dict[str, str], secrets: dict[str, str]) -> None:
    """Names the hub sets itself are refused, and a name is either a variable or a secret."""
    for name in [*env, *secrets]:
        if name.upper().startswith(RESERVED_PREFIXES) or name.upper() in RESERVED_NAMES:
            raise Unprocessable(f"{name} is set by the hub; pick another variable name", code="reserved_env")
    both = sorted(set(env) & set(secrets))
    if both:
        raise Unprocessable(f"{both[0]} is both a variable and a secret; keep one", code="env_conflict")


def check_command(command: str) -> tuple[str, ...]:
    """The command as shell words (422 when the quoting does not close)."""
    try:
        return tuple(shlex.split(command))
    except ValueError:
        raise Unprocessable("command has unbalanced quotes", code="bad_command") from None


def check_resources(
    default_cpu: float, max_cpu: float, default_mb: int, max_mb: int, hub_cpu: float, hub_mb: int
) -> None:
    """Defaults within maximums, maximums within the hub's limits."""
    if max_cpu > hub_cpu:
        raise Unprocessable(f"max_cpu must be at most {hub_cpu:g} (the hub's limit)", code="bad_resources")
    if max_mb > hub_mb:
        raise Unprocessable(f"max_memory_mb must be at most {hub_mb} (the hub's limit)", code="bad_resources")
    if default_cpu > max_cpu:
        raise Unprocessable(f"default_cpu {default_cpu:g} is above max_cpu {max_cpu:g}", code="bad_resources")
    if default_mb > max_mb:
        raise Unprocessable(f"default_memory_mb {default_mb} is above max_memory_mb {max_mb}", code="bad_resources")
