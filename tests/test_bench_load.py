"""bench.load writes what the gateway's own write path would: containers, the windows' zones and
late events, and the count roll-ups, for the events it loads (into SQLite, and into PostgreSQL
when EVENTS_GATEWAY_TEST_POSTGRES_URL is set)."""

import asyncio
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import bench.load
from bench.load import (
    EventGenerator,
    Manifest,
    load,
    load_postgres,
    read_postgres_manifest,
    storage_dialect,
)
from storage.counts import FINEST, ROLL_UPS, hour_of, key_columns, roll_up
from storage.windows import HOUR, MINUTE, is_late, zone_start
from tests.conftest import POSTGRES_URL_VARIABLE

# Not a multiple of the batch size nor of the rows per statement: the last batch and the last
# statement are short ones.
EVENTS = 2999


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text + "+00:00")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Manifest]]:
    path = tmp_path_factory.mktemp("bench") / "events.db"
    with pytest.MonkeyPatch.context() as patch:
        # Several batches, so that what is tallied across them is checked too.
        patch.setattr(bench.load, "BATCH_SIZE", 700)
        manifest = load(path, EVENTS, seed=3, quiet=True)
    yield path, manifest


def _events(path: Path) -> list[tuple[int, str, str, str, str, str, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT id, org_id, container_id, event_type, status, timestamp, received_at"
            " FROM events ORDER BY id"
        ).fetchall()


def test_events_get_ids_one_to_n_in_arrival_order(loaded: tuple[Path, Manifest]) -> None:
    path, _manifest = loaded
    rows = _events(path)
    assert [row[0] for row in rows] == list(range(1, EVENTS + 1))
    received = [row[6] for row in rows]
    assert received == sorted(received)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT seq FROM sqlite_sequence").fetchone() == (EVENTS,)


def test_the_loaded_zones_and_late_events_are_those_storage_would_record(
    loaded: tuple[Path, Manifest],
) -> None:
    path, _manifest = loaded
    zones: dict[tuple[str, int, datetime], list[int]] = {}
    late = set()
    for event_id, org_id, container, kind, status, timestamp, received_at in _events(path):
        if is_late(_utc(timestamp), _utc(received_at)):
            late.add((event_id, org_id, timestamp, container, kind, status))
            continue
        for span in (MINUTE, HOUR):
            bounds = zones.setdefault((org_id, span, zone_start(_utc(timestamp), span)), [])
            bounds.append(event_id)
    with sqlite3.connect(path) as connection:
        stored_zones = {
            (org_id, span, _utc(start)): (lo, hi)
            for org_id, span, start, lo, hi in connection.execute("SELECT * FROM event_zones")
        }
        stored_late = set(
            connection.execute(
                "SELECT id, org_id, timestamp, container_id, event_type, status FROM late_events"
            )
        )
    assert late and stored_late == late
    assert stored_zones == {key: (min(ids), max(ids)) for key, ids in zones.items()}


def test_containers_are_registered_at_their_first_arrival_with_their_latest_timestamp(
    loaded: tuple[Path, Manifest],
) -> None:
    path, _manifest = loaded
    expected: dict[tuple[str, str], list[str]] = {}
    for _id, org_id, container, _type, _status, timestamp, received_at in _events(path):
        known = expected.setdefault((org_id, container), [received_at, timestamp])
        known[1] = max(known[1], timestamp)
    with sqlite3.connect(path) as connection:
        stored = {
            (org_id, name): [created_at, last_event_at]
            for org_id, name, created_at, last_event_at in connection.execute(
                "SELECT org_id, id, created_at, last_event_at FROM containers"
            )
        }
    assert stored == expected


def test_the_loaded_counts_are_the_roll_ups_storage_would_keep(
    loaded: tuple[Path, Manifest],
) -> None:
    path, _manifest = loaded
    fine = Counter(
        (org_id, hour_of(_utc(timestamp)), container, event_type, status)
        for _id, org_id, container, event_type, status, timestamp, _received in _events(path)
    )
    expected = {FINEST: fine, **roll_up(fine)}
    assert set(expected) == set(ROLL_UPS)
    with sqlite3.connect(path) as connection:
        for table, counts in expected.items():
            key = ", ".join(key_columns(table))
            stored = connection.execute(f"SELECT {key}, event_count FROM {table.name}")
            assert {tuple(row[:-1]): row[-1] for row in stored} == dict(counts), table.name


def test_the_manifest_describes_the_bench_org_s_containers(
    loaded: tuple[Path, Manifest],
) -> None:
    path, manifest = loaded
    per_container = Counter(
        container for _id, org_id, container, *_rest in _events(path) if org_id == manifest.org_id
    )
    assert manifest.org_events == sum(per_container.values())
    assert manifest.busy_container_events == per_container[manifest.busy_container]
    assert manifest.busy_container_events == max(per_container.values())
    assert manifest.tail_container_events == per_container[manifest.tail_container]
    assert manifest.tail_container_events == min(per_container.values())


def test_a_seed_draws_the_same_events_every_time() -> None:
    end = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

    def drawn(seed: int) -> list[list[object]]:
        generator = EventGenerator(500, seed=seed, end=end, dialect=storage_dialect())
        return [
            column.tolist()
            for batch in generator.batches(200)
            for column in generator.rows(batch).values()
        ]

    assert drawn(7) == drawn(7)
    assert drawn(7) != drawn(8)


@pytest.fixture(scope="module")
def postgres_loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Manifest]]:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.load, "DATA_DIR", tmp_path_factory.mktemp("data"))
        patch.setattr(bench.load, "BATCH_SIZE", 700)
        manifest = load_postgres(url, EVENTS, seed=3, quiet=True)
        yield url, manifest


async def _fetch_values(url: str, queries: Sequence[str]) -> list[object]:
    connection = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        return [await connection.fetchval(query) for query in queries]
    finally:
        await connection.close()


def test_postgres_is_loaded_with_the_events_and_what_storage_records_beside_them(
    postgres_loaded: tuple[str, Manifest],
) -> None:
    url, manifest = postgres_loaded
    containers_as_stored = (
        "SELECT count(*) FROM containers c JOIN (SELECT org_id, container_id,"
        " min(received_at) AS first, max(timestamp) AS last FROM events GROUP BY 1, 2) e"
        " ON c.org_id = e.org_id AND c.id = e.container_id"
        " WHERE c.created_at = e.first AND c.last_event_at = e.last"
    )
    values = asyncio.run(
        _fetch_values(
            url,
            [
                "SELECT count(*) FROM events",
                "SELECT max(id) FROM events",
                "SELECT sum(event_count) FROM event_counts_by_org",
                "SELECT count(*) FROM containers",
                containers_as_stored,
                f"SELECT count(*) FROM events WHERE org_id = '{manifest.org_id}'",
                "SELECT nextval(pg_get_serial_sequence('events', 'id'))",
            ],
        )
    )
    events, last_id, counted, containers, as_stored, org_events, next_id = values
    assert (events, last_id, counted) == (EVENTS, EVENTS, EVENTS)
    assert containers == as_stored
    assert org_events == manifest.org_events
    assert next_id == EVENTS + 1
    assert read_postgres_manifest(url) == manifest
