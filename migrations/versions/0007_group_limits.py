"""group limits: templates and servers may be limited to groups (a JSON list of group ids; empty: everyone)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0002"
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
