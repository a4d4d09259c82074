"""group limits: templates and servers may be limited to groups (a JSON list of group ids; empty: everyone)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("templates", "servers"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("allowed_groups", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    for table in ("servers", "templates"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("allowed_groups")
