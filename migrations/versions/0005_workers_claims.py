"""Several workers on one run: the workers that joined it, and the samples each claimed.

`workers` holds one row per `exprof resume --join` process (the run's first worker keeps
its row in `leases`); `claims` records which worker took which (dataset position, repeat)
pair (migration 0004's repeats: `repeats: K` runs are joined too), written in the
transaction that takes it, so a claim outlives its worker's crash until the
worker's heartbeat goes stale and another worker takes it over.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("token", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("started", sa.Text),
    )
    op.create_index("ix_workers_run", "workers", ["run_id"])
    op.create_table(
        "claims",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("repeat", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
    )
    op.create_index("ix_claims_token", "claims", ["run_id", "token"])


def downgrade() -> None:
    op.drop_index("ix_claims_token", "claims")
    op.drop_table("claims")
    op.drop_index("ix_workers_run", "workers")
    op.drop_table("workers")
