"""What an answer's record says beyond its tokens: the thinking tokens it spent, whether
it was cut off (exprof.stops), a refusal's policy category, and, for a streamed answer,
its time to first token and output tokens per second.

The columns are added to `samples`, and the projections are emptied so that the store
rebuilds them, these columns filled, from the events the next time it is opened for
writing.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (
    ("thinking_tokens", sa.Integer),
    ("cut_off", sa.Integer),
    ("refusal_category", sa.Text),
    ("ttft_ms", sa.Float),
    ("output_tps", sa.Float),
)


def upgrade() -> None:
    with op.batch_alter_table("samples") as table:
        for name, kind in COLUMNS:
            table.add_column(sa.Column(name, kind))
    for name in ("runs", "samples", "projection_positions"):
        op.execute(f"DELETE FROM {name}")


def downgrade() -> None:
    with op.batch_alter_table("samples") as table:
        for name, _ in COLUMNS:
            table.drop_column(name)
