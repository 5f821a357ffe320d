"""Projections derived from the events, their positions, and run leases.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projection_positions",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("last_event_id", sa.Integer, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("experiment_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("samples_total", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_event_id", sa.Integer, nullable=False),
    )
    op.create_table(
        "samples",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("dialogue_id", sa.Text, primary_key=True),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("fact_coverage", sa.Float),
        sa.Column("refused", sa.Integer),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.Column("latency_ms", sa.Float),
        sa.Column("attempts", sa.Integer),
        sa.Column("response_event_id", sa.Integer),
        sa.Column("error_class", sa.Text),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_samples_run_idx", "samples", ["run_id", "idx"], unique=True)
    op.create_table(
        "leases",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "samples", "runs", "projection_positions"):
        op.drop_table(table)
