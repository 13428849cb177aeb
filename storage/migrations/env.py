"""Alembic's environment: runs the revisions on the connection storage.migrate hands it."""

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through storage.migrate, which passes the connection")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite alters a table only by copying it into a new one: batch mode writes that copy.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
