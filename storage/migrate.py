"""Schema migrations (Alembic): bring a database to the newest revision, adopting databases
that `Database.create_schema()` made before they were versioned.

To write a revision after changing storage/models.py, upgrade a scratch database and, on a
synchronous connection to it, run `alembic.command.revision(alembic_config(connection),
message, autogenerate=True)`; then review the file it writes to migrations/versions/.
"""

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

MIGRATIONS = Path(__file__).with_name("migrations")
# The schema as `create_schema()` made it before there were migrations.
INITIAL_REVISION = "0001"
# Any fixed number: every process upgrading one PostgreSQL database waits for this lock.
_POSTGRES_LOCK_KEY = 5_000_001


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration in code (no alembic.ini): our revisions, run on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The revision the database is stamped with; None when it is not versioned."""
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_schema(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Upgrade the database to the newest revision (`alembic upgrade head`), in one transaction
    where the dialect allows it; returns the revision before and after."""
    async with engine.begin() as connection:
        return await connection.run_sync(_upgrade)


def _upgrade(connection: Connection) -> tuple[str | None, str | None]:
    if connection.dialect.name == "postgresql":
        # Several hosts may start at once: one upgrades, the others then find nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
    config = alembic_config(connection)
    before = current_revision(connection)
    if before is None and _has_model_tables(connection):
        command.stamp(config, _unversioned_revision(connection))
    command.upgrade(config, "head")
    return before, current_revision(connection)


def _has_model_tables(connection: Connection) -> bool:
    return not set(SQLModel.metadata.tables).isdisjoint(inspect(connection).get_table_names())


def _unversioned_revision(connection: Connection) -> str:
    """The revision that tables made by create_schema() already are.

    Made by this release's models, they are the newest; otherwise they were made before there
    were migrations, which is the initial revision.
    """
    differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    return "head" if not differences else INITIAL_REVISION
