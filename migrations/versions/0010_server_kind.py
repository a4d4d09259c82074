"""servers of two kinds: a Docker engine (``docker_url``) or a Kubernetes namespace (``kubeconfig``, ``namespace``)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="docker", nullable=False))
        batch_op.add_column(sa.Column("kubeconfig", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("namespace", sa.String(length=63), nullable=True))
        batch_op.alter_column("docker_url", existing_type=sa.String(length=255), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM servers WHERE kind <> 'docker'")
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.alter_column("docker_url", existing_type=sa.String(length=255), nullable=False)
        batch_op.drop_column("namespace")
        batch_op.drop_column("kubeconfig")
        batch_op.drop_column("kind")
