"""Storage behaviour both REST and GraphQL rely on."""

import asyncio
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import DateTime, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

import storage.driver
from storage.database import Database, normalize_url
from storage.domain import EventFilter, Order
from storage.driver import Reader
from storage.events import Page, Window, list_events, log_events
from storage.keys import DEFAULT_SCOPES, KeyHolder, create_key, hash_key, holder_of_key, revoke_key
from storage.models import Event, UTCDateTime, api_keys
from storage.orgs import ContainerRecord, _sqlite_containers_by_ids, get_container, get_containers
from tests.factories import count_events, make_events, make_org, new_event
from tests.sql_statements import SQLStatements


async def test_event_ids_grow_with_every_write(db: Database) -> None:
    await make_org(db, "acme")
    first = await make_events(db, "acme", [("c1", {}), ("c2", {})])
    second = await make_events(db, "acme", [("c1", {})])
    ids = [row["id"] for row in [*first, *second]]
    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_a_large_write_goes_out_a_chunk_of_rows_a_statement_each_row_as_sent(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL: SQLAlchemy converts all of a statement's parameters on the event loop before
    # its first row goes out, so a write is sent WRITE_CHUNK rows a statement (bench.stalls: a
    # 10,000-event batch with 3 KiB details held the loop 185 ms as one statement, 57 ms in
    # chunks of 1,000). SQLite's rows are converted in aiosqlite's thread, one statement.
    monkeypatch.setattr(storage.driver, "WRITE_CHUNK", 3)
    await make_org(db, "acme")
    specs = [(f"c{index % 4}", {"details": {"n": index}}) for index in range(10)]
    with SQLStatements(db) as seen:
        rows = await make_events(db, "acme", specs)
    if db.dialect == "postgresql":
        inserts = [sql for sql in seen.statements if sql.startswith("INSERT INTO events ")]
        assert len(inserts) == 4  # 3 + 3 + 3 + 1 rows
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert [row["details"] for row in rows] == [{"n": index} for index in range(10)]
    async with db.reader() as reader:
        page = await list_events(reader, org_id="acme", page=Page(order=Order.ASC))
    assert [(row["id"], row["container_id"], row["details"]) for row in page.rows] == [
        (event_id, container_id, {"n": index})
        for index, (event_id, (container_id, _fields)) in enumerate(zip(ids, specs, strict=True))
    ]
    async with db.reader() as reader:
        found = await get_containers(reader, org_id="acme", container_ids=["c0", "c1", "c2", "c3"])
    assert sorted(found) == ["c0", "c1", "c2", "c3"]


async def test_concurrent_batches_of_shared_containers_in_opposite_orders_all_commit(
    db: Database,
) -> None:
    # Rows locked in input order would deadlock here on PostgreSQL: each batch holds half the
    # containers the other one waits for.
    await make_org(db, "acme")
    names = [f"c{index:02d}" for index in range(20)]

    async def store(order: list[str]) -> None:
        async with db.session() as session:
            await log_events(session, org_id="acme", items=[(name, new_event()) for name in order])

    for _ in range(5):
        await asyncio.gather(store(names), store(names[::-1]))
    assert await count_events(db) == 200


async def test_a_batch_that_fails_stores_nothing(db: Database) -> None:
    await make_org(db, "acme")
    with pytest.raises(IntegrityError):
        # The org does not exist: the foreign key fails the whole transaction.
        await make_events(db, "ghost", [("c1", {}), ("c2", {})])
    assert await count_events(db) == 0


async def test_timestamps_are_stored_in_utc_whatever_offset_was_given(db: Database) -> None:
    await make_org(db, "acme")
    plus_two = datetime(2023, 11, 18, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    await make_events(db, "acme", [("c1", {"timestamp": plus_two})])
    async with db.reader() as reader:
        [row] = (await list_events(reader, org_id="acme")).rows
    assert row["timestamp"] == datetime(2023, 11, 18, 12, 0, tzinfo=UTC)
    assert row["timestamp"].tzinfo is not None and row["received_at"].tzinfo is not None


async def test_pages_decode_events_exactly_as_sqlalchemy_does(db: Database) -> None:
    # list_events decodes rows itself (storage.events.EVENT_DECODERS); the session goes
    # through the column types' own processors. Both must give the same records.
    await make_org(db, "acme")
    await make_events(
        db,
        "acme",
        [
            ("c1", {"timestamp": datetime(2023, 11, 18, 12, 0, tzinfo=UTC)}),
            ("c2", {"timestamp": datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)}),
            ("c1", {"details": {"ip": "10.0.0.1", "nested": {"ü": [1, 2.5, None, True]}}}),
            ("c3", {"actor": "ops@example.com", "details": {}}),
        ],
    )
    async with db.session() as session:
        stored = (await session.execute(select(Event).order_by(Event.id.desc()))).scalars()
        expected = [{**event.model_dump(), "details": event.details or {}} for event in stored]
    async with db.reader() as reader:
        found = await list_events(reader, org_id="acme")
    assert found.rows == expected
    assert [row["details"] for row in found.rows][:2] == [
        {},
        {"ip": "10.0.0.1", "nested": {"ü": [1, 2.5, None, True]}},
    ]
    assert all(row["timestamp"].tzinfo is UTC for row in found.rows)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2023, 11, 18, 12, 0, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2023, 11, 18, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(1, 1, 1, 0, 0, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_sqlite_stores_times_as_sqlalchemys_datetime_text_in_utc(moment: datetime) -> None:
    # SQLite compares the stored text: UTCDateTime's own binder must write exactly what
    # SQLAlchemy's DATETIME would for the same time in UTC.
    dialect = sqlite.dialect()
    fast = UTCDateTime().bind_processor(dialect)
    generic = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert fast is not None and generic is not None
    assert fast(moment) == generic(moment.astimezone(UTC).replace(tzinfo=None))
    assert fast(None) is None


async def test_container_is_registered_once_and_keeps_its_latest_event_time(db: Database) -> None:
    await make_org(db, "acme")
    late = datetime(2024, 1, 1, tzinfo=UTC)
    early = datetime(2023, 1, 1, tzinfo=UTC)
    await make_events(db, "acme", [("c1", {"timestamp": late})])
    await make_events(db, "acme", [("c1", {"timestamp": early})])
    async with db.reader() as reader:
        container = await get_container(reader, org_id="acme", container_id="c1")
    assert container is not None and container.last_event_at == late


CONTAINER_ID_COUNTS = [0, 1, 3, 64, 65, 200]


async def test_containers_by_id_are_found_alike_whatever_the_number_of_ids(db: Database) -> None:
    """get_containers (a page's containers, through the DataLoader) answers for each id what
    get_container answers, and what the IN statement with a power-of-two number of parameters
    (PostgreSQL's before it sent one array) answers: duplicates once, unknown ids, another
    org's containers and ids of a container in both orgs included."""
    await make_org(db, "acme")
    await make_org(db, "other")
    known = [f"c{index:03d}" for index in range(150)]
    await make_events(db, "acme", [(container_id, {}) for container_id in known])
    await make_events(db, "other", [("c000", {}), ("o001", {}), ("o002", {})])
    # c000 is a container of both orgs, o001 only the other's; ghosts of neither.
    first = ["c000", "o001"]
    pool = known[1:] + [f"ghost{index}" for index in range(60)] + ["o002"]
    rng = random.Random(15)
    asked = []
    for size in CONTAINER_ID_COUNTS:
        ids = first[:size] + rng.sample(pool, max(0, size - len(first)))
        asked.append(ids + ids[: (size + 1) // 2])  # `size` distinct ids, some of them again

    with SQLStatements(db) as seen:
        async with db.reader() as reader:
            found = [
                await get_containers(reader, org_id="acme", container_ids=ids) for ids in asked
            ]
    async with db.reader() as reader:
        for ids, answer in zip(asked, found, strict=True):
            expected: dict[str, ContainerRecord] = {}
            for container_id in ids:
                row = await get_container(reader, org_id="acme", container_id=container_id)
                if row is not None:
                    expected[container_id] = row
            wanted = sorted(set(ids))
            rows = await _sqlite_containers_by_ids(reader, "acme", wanted) if wanted else []
            assert answer == expected, len(ids)
            assert answer == {row[1]: ContainerRecord._make(row) for row in rows}, len(ids)
            assert all(row.org_id == "acme" for row in answer.values())
    assert [len(answer) for answer in found][:2] == [0, 1]
    # Some ids are unknown to acme: 200 asked, 150 known.
    assert len(found[-1]) == len(set(known) & set(asked[-1])) < 200

    statements = seen.statements
    assert len(statements) == len(CONTAINER_ID_COUNTS) - 1  # no statement for no ids
    if db.dialect == "postgresql":
        # One statement, one array parameter, for every number of ids.
        [statement] = set(statements)
        assert "= ANY ($2::VARCHAR[])" in statement, statement
    else:
        # IN with a power of two of parameters (after the org's): the distinct ids rounded up.
        placeholders = [statement.count("?") - 1 for statement in statements]
        assert placeholders == [1, 4, 64, 128, 256], placeholders
        assert all(re.search(r"\bIN \(", statement) for statement in statements)


async def test_window_is_inclusive_since_and_exclusive_until(db: Database) -> None:
    await make_org(db, "acme")
    rows = await make_events(db, "acme", [("c1", {}) for _ in range(5)])
    window = Window(since=rows[1]["timestamp"], until=rows[3]["timestamp"])
    async with db.reader() as reader:
        found = await list_events(reader, org_id="acme", window=window, page=Page(order=Order.ASC))
    assert [row["id"] for row in found.rows] == [rows[1]["id"], rows[2]["id"]]


async def test_api_keys_are_stored_only_as_hashes_and_stop_working_when_revoked(
    db: Database,
) -> None:
    await make_org(db, "acme")
    async with db.session() as session:
        key, secret = await create_key(session, org_id="acme")
        stored = (await session.execute(select(api_keys))).all()
        assert all(secret not in row.key_hash and secret != row.prefix for row in stored)
        async with db.reader() as reader:
            assert await holder_of_key(reader, key_hash=hash_key(secret)) == KeyHolder(
                key.id, "acme", DEFAULT_SCOPES
            )
            assert await revoke_key(session, key_id=key.id)
            assert await holder_of_key(reader, key_hash=hash_key(secret)) is None
        assert not await revoke_key(session, key_id=key.id)


def test_plain_urls_get_the_async_driver() -> None:
    assert normalize_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalize_url("postgresql://u@h/d") == "postgresql+asyncpg://u@h/d"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u@h/d")


READ_PATHS = {
    "org": {},
    "filter": {"event_filter": EventFilter.BLOCK},
    "fail": {"event_filter": EventFilter.FAIL},
    "container": {"container_id": "c1"},
    "container_and_filter": {"container_id": "c1", "event_filter": EventFilter.ACCESS},
}


async def sqlite_plan(tmp_path: Path, **arguments: Any) -> str:
    """How SQLite runs the exact statement list_events sends for these arguments."""
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    await db.create_schema()
    await make_org(db, "acme")
    await make_events(db, "acme", [("c1", {}), ("c2", {"status": "FAILURE"})])
    sent: list[tuple[str, list[Any]]] = []

    async def remember(sql: str, parameters: list[Any]) -> list[Any]:
        sent.append((sql, parameters))
        return []

    async with db.reader() as reader:
        # The same reader, recording instead of running, shows the exact statement sent.
        await list_events(Reader(remember, reader.dialect, {}), org_id="acme", **arguments)
    [(statement, parameters)] = sent
    async with db.engine.connect() as connection:
        plan = (
            await connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, tuple(parameters))
        ).all()
    await db.dispose()
    return " | ".join(row[-1] for row in plan)


@pytest.mark.parametrize("order", list(Order))
@pytest.mark.parametrize("path", READ_PATHS)
async def test_every_read_path_is_an_index_range_scan_without_sorting(
    tmp_path: Path, path: str, order: Order
) -> None:
    page = Page(limit=10, after_id=2, order=order)
    details = await sqlite_plan(tmp_path, page=page, **READ_PATHS[path])
    assert "USING INDEX ix_events_org" in details or "USING COVERING INDEX" in details, details
    assert "TEMP B-TREE" not in details, details


# The indexes a window page may walk: either index of a container with a filter serves.
WALKED_INDEXES = {
    "org": ("ix_events_org",),
    "filter": ("ix_events_org_type",),
    "fail": ("ix_events_org_status",),
    "container": ("ix_events_org_container",),
    "container_and_filter": ("ix_events_org_container", "ix_events_org_type"),
}


@pytest.mark.parametrize("order", list(Order))
@pytest.mark.parametrize("path", READ_PATHS)
async def test_a_window_page_walks_its_read_path_inside_the_zones_id_range(
    tmp_path: Path, path: str, order: Order
) -> None:
    window = Window(since=datetime(2023, 1, 1, tzinfo=UTC), until=datetime(2024, 1, 1, tzinfo=UTC))
    page = Page(limit=10, after_id=2, order=order)
    details = await sqlite_plan(tmp_path, window=window, page=page, **READ_PATHS[path])
    steps = details.split(" | ")
    # The walk: a range of ids on the path's own index, bounded by the zones and the cursor,
    # merged in page order (no sorting) with the late events' rows, found by their ids.
    assert steps[0] == "MERGE (UNION ALL)", details
    walk = [
        step
        for step in steps
        if any(
            step.startswith(f"SEARCH events USING INDEX {name} ") for name in WALKED_INDEXES[path]
        )
    ]
    assert walk and "id>? AND id<?" in walk[0], details
    assert "SEARCH events USING INTEGER PRIMARY KEY (rowid=?)" in steps, details
    assert "TEMP B-TREE" not in details, details
    # The zones' id range is computed once (each of the window's three zone ranges scanned in
    # key order, without row lookups) and shared by both arms. Late events come through their
    # keys; the time index, which would read the whole window, is not used.
    assert "MATERIALIZE zone_range" in steps, details
    zone_scans = [step for step in steps if step.startswith("SEARCH event_zones")]
    assert len(zone_scans) == 3, details
    assert all(step.startswith("SEARCH event_zones USING PRIMARY KEY") for step in zone_scans)
    assert "SEARCH late_events USING COVERING INDEX ix_late_events_org_time" in details, details
    assert "ix_events_org_time" not in details, details
    assert not any(step.startswith("SCAN events") for step in steps), details
