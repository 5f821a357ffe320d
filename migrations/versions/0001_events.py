"""The append-only events table, guarded by triggers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("run_id", "seq", name="uq_events_run_seq"),
    )
    # The database itself refuses to change an event: a trigger per action, both dialects.
    postgres = op.get_context().dialect.name == "postgresql"
    if postgres:
        op.execute(
            "CREATE FUNCTION exprof_events_immutable() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION USING MESSAGE = "
            "'events are immutable: ' || TG_OP || ' refused'; END $$"
        )
    for action in ("UPDATE", "DELETE"):
        if postgres:
            op.execute(
                f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events "
                "FOR EACH ROW EXECUTE FUNCTION exprof_events_immutable()"
            )
        else:
            op.execute(
                f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events "
                f"BEGIN SELECT RAISE(ABORT, 'events are immutable: {action} refused'); END"
            )


def downgrade() -> None:
    postgres = op.get_context().dialect.name == "postgresql"
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER events_no_{action}" + (" ON events" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION exprof_events_immutable()")
    op.drop_table("events")
