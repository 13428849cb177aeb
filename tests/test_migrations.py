"""Schema migrations: what `upgrade_schema` makes of each database, and the commands that run it."""

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from storage.database import Database
from storage.migrate import MIGRATIONS, upgrade_schema
from tests.conftest import POSTGRES_URL_VARIABLE
from tests.factories import auth, make_org
from tests.test_cli import (
    _assert_clean_failure,
    _free_port,
    _sqlite_url,
    create_org_key,
    run_cli,
    running,
    wait_until_serving,
)

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


async def _drop_everything(db: Database) -> None:
    await db.drop_schema()
    async with db.engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
async def empty_db(database_url: str) -> AsyncIterator[Database]:
    """A database without tables, not even alembic's (PostgreSQL's is emptied before and after)."""
    database = Database(database_url)
    try:
        await _drop_everything(database)
    except OSError as error:
        await database.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES_URL_VARIABLE} is not reachable: {error}")
    yield database
    await _drop_everything(database)
    await database.dispose()


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), SQLModel.metadata))


async def differences_from_models(db: Database) -> list[object]:
    """What autogenerate would change: tables, columns, types, indexes, constraints."""
    async with db.engine.connect() as connection:
        return await connection.run_sync(_differences)


async def revision(db: Database) -> str | None:
    async with db.engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


_SQLITE_SCHEMA = "SELECT type, name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version'"
_POSTGRES_SCHEMA = [
    "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,"
    " column_default FROM information_schema.columns"
    " WHERE table_schema = 'public' AND table_name != 'alembic_version'",
    "SELECT indexname, indexdef FROM pg_indexes"
    " WHERE schemaname = 'public' AND tablename != 'alembic_version'",
    "SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid)"
    " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
    " AND conrelid::regclass::text != 'alembic_version'",
]


async def schema_as_created(db: Database) -> set[tuple[object, ...]]:
    """The database's own account of its schema: SQLite's CREATE statements, PostgreSQL's
    catalog. It shows what compare_metadata does not: AUTOINCREMENT, WITHOUT ROWID, sequences."""
    statements = [_SQLITE_SCHEMA] if db.dialect == "sqlite" else _POSTGRES_SCHEMA
    rows: set[tuple[object, ...]] = set()
    async with db.engine.connect() as connection:
        for statement in statements:
            result = await connection.execute(text(statement))
            rows |= {tuple(" ".join(str(value).split()) for value in row) for row in result}
    return rows


async def test_upgrading_an_empty_database_creates_the_models_tables(empty_db: Database) -> None:
    assert await upgrade_schema(empty_db.engine) == (None, HEAD)

    assert await differences_from_models(empty_db) == []
    assert await revision(empty_db) == HEAD


async def test_upgraded_schema_is_exactly_what_create_schema_makes(empty_db: Database) -> None:
    await empty_db.create_schema()
    created = await schema_as_created(empty_db)
    assert len(created) > len(SQLModel.metadata.tables)
    await _drop_everything(empty_db)

    await upgrade_schema(empty_db.engine)

    assert await schema_as_created(empty_db) == created


async def test_upgrading_twice_changes_nothing(empty_db: Database) -> None:
    await upgrade_schema(empty_db.engine)
    schema = await schema_as_created(empty_db)

    assert await upgrade_schema(empty_db.engine) == (HEAD, HEAD)
    assert await schema_as_created(empty_db) == schema


async def test_database_made_by_create_schema_is_stamped_and_keeps_its_rows(
    empty_db: Database,
) -> None:
    await empty_db.create_schema()
    await make_org(empty_db, "acme")

    assert await upgrade_schema(empty_db.engine) == (None, HEAD)

    assert await differences_from_models(empty_db) == []
    async with empty_db.engine.connect() as connection:
        assert (await connection.execute(text("SELECT id FROM organizations"))).all() == [("acme",)]


async def test_unversioned_database_unlike_the_models_is_adopted_not_refused(
    empty_db: Database,
) -> None:
    # Made before there were migrations, by models older than the initial revision: without
    # the later revisions' columns, and without an index the initial revision has.
    await empty_db.create_schema()
    async with empty_db.engine.begin() as connection:
        await connection.execute(text("DROP INDEX ix_events_org_time"))
        await connection.execute(text("ALTER TABLE events DROP COLUMN key_id"))
        await connection.execute(text("ALTER TABLE api_keys DROP COLUMN scopes"))

    assert await upgrade_schema(empty_db.engine) == (None, HEAD)
    assert await revision(empty_db) == HEAD


def _sqlite_revision(path: Path) -> list[tuple[str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchall()


def test_db_upgrade_command_upgrades_then_finds_nothing_to_do(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)

    first = run_cli("db", "upgrade", database_url=url)
    again = run_cli("db", "upgrade", database_url=url)

    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    assert f"to {HEAD}" in first.stderr
    assert again.returncode == 0, again.stderr
    assert f"already at revision {HEAD}" in again.stderr
    assert _sqlite_revision(tmp_path / "events.db") == [(HEAD,)]


def test_db_upgrade_stamps_a_database_the_cli_created_before(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    create_org_key("acme", url)  # admin commands create missing tables, unversioned

    result = run_cli("db", "upgrade", database_url=url)

    assert result.returncode == 0, result.stderr
    assert f"from unversioned to {HEAD}" in result.stderr
    assert _sqlite_revision(tmp_path / "events.db") == [(HEAD,)]


def test_db_upgrade_of_a_revision_this_code_does_not_know_fails_cleanly(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    assert run_cli("db", "upgrade", database_url=url).returncode == 0
    with sqlite3.connect(tmp_path / "events.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'from_the_future'")

    result = run_cli("db", "upgrade", database_url=url)

    _assert_clean_failure(result)
    assert "from_the_future" in result.stderr


def _worker_count(stderr: Path) -> int:
    return stderr.read_text().count("Started server process")


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)

    result = run_cli("serve", "--port", str(_free_port()), "--workers", "2", database_url=url)

    _assert_clean_failure(result)
    assert "PostgreSQL" in result.stderr
    assert not (tmp_path / "events.db").exists()


async def test_serve_with_two_workers_upgrades_and_serves_writes_and_reads(
    empty_db: Database, tmp_path: Path
) -> None:
    if empty_db.dialect != "postgresql":
        pytest.skip("several workers need PostgreSQL (SQLite is refused: see the test above)")
    url = empty_db.url
    key = create_org_key("acme", url)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port), "--workers", "2"]

    with running(args, database_url=url, logs=tmp_path) as process:
        wait_until_serving(process, base_url)
        posted = httpx.post(
            f"{base_url}/orgs/acme/containers/vault-1/events",
            json={"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z"},
            headers=auth(key),
            timeout=10,
        )
        # Several reads, so that both workers are likely to answer one.
        listed = [
            httpx.get(f"{base_url}/orgs/acme/events", headers=auth(key), timeout=10)
            for _ in range(4)
        ]
        deadline = time.monotonic() + 10
        while _worker_count(tmp_path / "stderr") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _worker_count(tmp_path / "stderr")

    assert posted.status_code in (200, 201), posted.text
    event_id = posted.json()["event"]["id"]
    for response in listed:
        assert response.status_code == 200
        assert [event["id"] for event in response.json()["events"]] == [event_id]
    assert workers == 2
    assert await revision(empty_db) == HEAD
