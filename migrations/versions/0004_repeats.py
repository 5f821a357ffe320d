"""Repeats and reuse (issue 12): a sample's row in the projection is one (sample, repeat)
pair, each run records how many repeats it sends, and a row says whether its answer was
reused from the store rather than sent.

`samples` is keyed by (run_id, dialogue_id, repeat) and its `idx` becomes the pair's
slot, position * repeats + repeat (the dataset position itself when repeats is 1). The
projections are emptied so that the store rebuilds them from the events the next time
it is opened for writing.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _columns(*key: sa.Column) -> list[sa.Column]:
    """The samples table's columns as 0003 left them, with `key` after the run and
    dialogue ids."""
    return [
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("dialogue_id", sa.Text, primary_key=True),
        *key,
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
        sa.Column("facts_missing", sa.Text),
    ]


def upgrade() -> None:
    op.drop_index("ix_samples_run_idx", table_name="samples")
    op.drop_table("samples")
    op.create_table(
        "samples",
        *_columns(sa.Column("repeat", sa.Integer, primary_key=True, autoincrement=False)),
        sa.Column("reused", sa.Integer),  # 1 when the answer was reused, not sent
        sqlite_with_rowid=False,
    )
    op.create_index("ix_samples_run_idx", "samples", ["run_id", "idx"], unique=True)
    op.add_column(
        "runs", sa.Column("repeats", sa.Integer, nullable=False, server_default=sa.text("1"))
    )
    for table in ("runs", "projection_positions"):
        op.execute(f"DELETE FROM {table}")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("repeats")
    op.drop_index("ix_samples_run_idx", table_name="samples")
    op.drop_table("samples")
    op.create_table("samples", *_columns(), sqlite_with_rowid=False)
    op.create_index("ix_samples_run_idx", "samples", ["run_id", "idx"], unique=True)
    for table in ("runs", "projection_positions"):
        op.execute(f"DELETE FROM {table}")
