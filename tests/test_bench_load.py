"""bench.load writes what the gateway's own write path would: containers, the windows' zones and
late events, and the count roll-ups, for the events it loads."""

import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import bench.load
from bench.load import EventGenerator, Manifest, load, storage_dialect
from storage.counts import FINEST, ROLL_UPS, hour_of, key_columns, roll_up
from storage.windows import HOUR, MINUTE, is_late, zone_start

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
