"""Alembic environment: runs on the connection exprof hands over, or on the ini's URL."""

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
        run(conn)
