"""Recorded missed facts in the samples projection, a per-run hash chain over the events,
and the lease holder's process start time.

The projections are emptied so that the store rebuilds them, with the new column, from
the events the next time it is opened for writing. Events written before this revision
keep a NULL hash: doctor reports them as unchained, not as tampered.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("facts_missing", sa.Text))
    # ADD COLUMN straight away (no batch copy): a copy would drop the events' triggers.
    op.add_column("events", sa.Column("hash", sa.Text))
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("started", sa.Text))
    for table in ("samples", "runs", "projection_positions"):
        op.execute(f"DELETE FROM {table}")


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("started")
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("facts_missing")
