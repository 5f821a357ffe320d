"""An answer's usage by class, for the cost ledger (exprof.pricing): its cache writes at
the 5-minute and the 1-hour rate, its cache reads, and the service tier and speed it ran
at, which may carry rates of their own.

The columns are added to `samples`, and the projections are emptied so that the store
rebuilds them, these columns filled, from the events the next time it is opened for
writing.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = (
    ("cache_write_5m_tokens", sa.Integer),
    ("cache_write_1h_tokens", sa.Integer),
    ("cache_read_tokens", sa.Integer),
    ("service_tier", sa.Text),
    ("speed", sa.Text),
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
