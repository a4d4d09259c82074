"""deployment identity: the hub id created with the database

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "deployment",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hub_id", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment")),
    )
    # One row, written once: the id that marks this deployment's containers and volumes on shared engines.
    op.bulk_insert(table, [{"id": 1, "hub_id": f"hub-{secrets.token_hex(8)}", "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("deployment")
