"""workspace grants: a workspace shared with a user or a group (subdomain mode)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspace_grants",
        sa.Column("workspace_id", sa.String(length=16), nullable=False),
        sa.Column("subject_kind", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("granted_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_grants_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["granted_by"], ["users.id"], name=op.f("fk_workspace_grants_granted_by_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("workspace_id", "subject_kind", "subject_id", name=op.f("pk_workspace_grants")),
    )
    with op.batch_alter_table("workspace_grants", schema=None) as batch_op:
        batch_op.create_index("ix_workspace_grants_subject", ["subject_kind", "subject_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workspace_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_workspace_grants_subject")
    op.drop_table("workspace_grants")
