"""Counts for dashboards: storage/counts.py and its REST twin GET /orgs/{org_id}/events/counts."""

import random
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import DBAPIError

from bench.load import load
from storage import counts, driver
from storage.counts import ROLL_UPS, CountBy, InvalidCounts, count_events, event_counts
from storage.database import Database
from storage.domain import EventFilter, EventStatus, EventType, NewEvent
from storage.events import Page, Window, list_events, log_events
from storage.models import events
from tests.factories import BASE_TIME, auth, make_events
from tests.rest_assertions import assert_problem
from tests.sql_statements import SQLStatements
from tests.test_openapi import COUNTS_PATH, assert_documented

COUNTS = "/orgs/acme/events/counts"
DAY = {"since": "2023-11-18T00:00:00Z", "until": "2023-11-19T00:00:00Z"}
DAY_WINDOW = Window(datetime(2023, 11, 18, tzinfo=UTC), datetime(2023, 11, 19, tzinfo=UTC))

# Events on both sides of the day's edges and of hour edges; 6 of them fall on 2023-11-18 UTC.
TIMED = [
    ("c1", {"event_type": "ACCESS", "timestamp": "2023-11-17T23:59:59.999999Z"}),
    ("c1", {"event_type": "ACCESS", "timestamp": "2023-11-18T00:00:00Z"}),
    ("c2", {"event_type": "ACCESS", "status": "FAILURE", "timestamp": "2023-11-18T00:59:59Z"}),
    ("c1", {"event_type": "BLOCK", "timestamp": "2023-11-18T01:00:00Z"}),
    ("c3", {"event_type": "CREATE", "timestamp": "2023-11-18T03:30:00+02:00"}),
    ("c2", {"event_type": "EXPIRE", "status": "FAILURE", "timestamp": "2023-11-18T05:00:00Z"}),
    ("c1", {"event_type": "ACCESS", "timestamp": "2023-11-18T23:59:59.999999Z"}),
    ("c2", {"event_type": "ACCESS", "timestamp": "2023-11-19T00:00:00Z"}),
]

# Every type with every status over three containers, one minute apart from BASE_TIME.
MIXED = [
    (f"c{index % 3}", {"event_type": event_type, "status": status})
    for index, (event_type, status) in enumerate(product(EventType, EventStatus))
] * 2

WINDOWS = {
    "all_time": Window(),
    "since_only": Window(since=BASE_TIME + timedelta(minutes=5)),
    "until_only": Window(until=BASE_TIME + timedelta(minutes=5)),
    "both": Window(BASE_TIME + timedelta(minutes=3), BASE_TIME + timedelta(minutes=17)),
}


def hour(text: str) -> str:
    return f"2023-11-18T{text}:00:00Z"


ROLL_UP_NAME = re.compile("|".join(rf"\b{table.name}\b" for table in ROLL_UPS))


def counting(seen: SQLStatements) -> list[str]:
    """The statements that count events: a COUNT over events, or a read of the roll-ups."""
    return [
        statement
        for statement in seen.statements
        if statement.lstrip().upper().startswith(("SELECT", "WITH"))
        and (ROLL_UP_NAME.search(statement) or statement in seen.counts)
    ]


async def counted(db: Database, by: CountBy, window: Window = DAY_WINDOW, **options: Any):
    async with db.session() as session:
        found = await event_counts(session, org_id="acme", window=window, by=by, **options)
    return [(bucket.key, bucket.count) for bucket in found.buckets], found.total


async def total_of(db: Database, **arguments: Any) -> int:
    """count_events on the read pool, as totalCount runs it; the same statement through a
    session must agree."""
    async with db.reader() as reader:
        total = await count_events(reader, org_id="acme", **arguments)
    async with db.session() as session:
        assert await count_events(session, org_id="acme", **arguments) == total, arguments
    return total


async def listed(db: Database, **arguments: Any) -> int:
    """How many events list_events returns, walked page by page."""
    seen, cursor = 0, None
    async with db.reader() as reader:
        while True:
            page = Page.parse(limit=4, cursor=cursor)
            found = await list_events(reader, org_id="acme", page=page, **arguments)
            seen += len(found.rows)
            if found.next_cursor is None:
                return seen
            cursor = found.next_cursor


@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
@pytest.mark.parametrize("container_id", [None, "c1", "nowhere"])
async def test_every_total_is_the_number_of_events_the_same_list_walks_through(
    db, acme_key, other_key, container_id, window
):
    await make_events(db, "acme", MIXED)
    await make_events(db, "other", MIXED)

    for event_filter in [None, *EventFilter]:
        arguments = {"event_filter": event_filter, "container_id": container_id, "window": window}
        assert await total_of(db, **arguments) == await listed(db, **arguments), arguments
    assert await listed(db, window=window) > 0


async def test_a_total_on_the_read_pool_is_compiled_once_per_shape(db, acme_key, monkeypatch):
    await make_events(db, "acme", TIMED + MIXED)
    day = datetime(2023, 11, 18, tzinfo=UTC)
    # Ends 10 minutes into an hour and 10 minutes before one: each read as the hour's roll-up
    # less the part outside the window, whatever the hour.
    windows = [
        Window(day + timedelta(hours=first, minutes=10), day + timedelta(hours=last, minutes=50))
        for first, last in [(0, 5), (2, 12), (11, 13)]
    ]
    cases = [
        {"event_filter": event_filter, "container_id": container_id, "window": window}
        for event_filter, container_id in [(None, "c1"), (None, "c2"), (EventFilter.FAIL, "c1")]
        for window in windows
    ]
    expected = [await listed(db, **case) for case in cases]
    compiled: list[Any] = []
    compile_query = driver.compile_query

    def compiling(statement: Any, dialect: Any, column_keys: Any = None) -> Any:
        compiled.append(statement)
        return compile_query(statement, dialect, column_keys)

    monkeypatch.setattr(driver, "compile_query", compiling)

    async with db.reader() as reader:
        found = [await count_events(reader, org_id="acme", **case) for case in cases]
    async with db.reader() as reader:
        again = [await count_events(reader, org_id="acme", **case) for case in cases]

    assert found == again == expected
    assert sum(expected) > 0
    # Two shapes: a container's events, and a container's failures.
    assert len(compiled) == 2


async def test_counts_by_type_are_largest_first_then_by_name(db, acme_key):
    await make_events(db, "acme", TIMED)

    assert await counted(db, CountBy.TYPE) == (
        [("ACCESS", 3), ("BLOCK", 1), ("CREATE", 1), ("EXPIRE", 1)],
        6,
    )


async def test_counts_by_status(db, acme_key):
    await make_events(db, "acme", TIMED)

    assert await counted(db, CountBy.STATUS) == ([("SUCCESS", 4), ("FAILURE", 2)], 6)


async def test_counts_by_container(db, acme_key):
    await make_events(db, "acme", TIMED)

    assert await counted(db, CountBy.CONTAINER) == ([("c1", 3), ("c2", 2), ("c3", 1)], 6)


async def test_counts_by_container_keep_the_busiest_and_still_total_them_all(
    db, acme_key, monkeypatch
):
    await make_events(db, "acme", TIMED)
    monkeypatch.setattr(counts, "MAX_BUCKETS", 2)

    assert await counted(db, CountBy.CONTAINER) == ([("c1", 3), ("c2", 2)], 6)


async def test_counts_by_hour_list_every_hour_of_the_window_in_utc(db, acme_key):
    await make_events(db, "acme", TIMED)

    buckets, total = await counted(db, CountBy.HOUR)

    assert [key for key, _ in buckets] == [hour(f"{h:02d}") for h in range(24)]
    assert {key: count for key, count in buckets if count} == {
        hour("00"): 2,  # 00:00:00 is in (since is inclusive), as is 00:59:59
        hour("01"): 2,  # 01:00:00, and 03:30+02:00
        hour("05"): 1,
        hour("23"): 1,  # 23:59:59.999999 is in; 2023-11-19T00:00:00 is not (until is exclusive)
    }
    assert total == 6


async def test_hour_buckets_start_on_the_hour_and_count_only_inside_the_window(db, acme_key):
    await make_events(db, "acme", TIMED)
    window = Window(
        datetime(2023, 11, 18, 0, 30, tzinfo=UTC), datetime(2023, 11, 18, 1, 30, tzinfo=UTC)
    )

    assert await counted(db, CountBy.HOUR, window) == ([(hour("00"), 1), (hour("01"), 1)], 2)


async def test_counts_by_day_split_at_utc_midnight(db, acme_key):
    await make_events(db, "acme", TIMED)
    window = Window(datetime(2023, 11, 17, 12, tzinfo=UTC), datetime(2023, 11, 19, 12, tzinfo=UTC))

    assert await counted(db, CountBy.DAY, window) == (
        [("2023-11-17T00:00:00Z", 1), ("2023-11-18T00:00:00Z", 6), ("2023-11-19T00:00:00Z", 1)],
        8,
    )


async def test_counts_take_the_filter_and_container_of_the_lists(db, acme_key):
    await make_events(db, "acme", TIMED)

    by_type, _ = await counted(db, CountBy.TYPE, event_filter=EventFilter.FAIL)
    by_hour, total = await counted(db, CountBy.HOUR, container_id="c1")

    assert by_type == [("ACCESS", 1), ("EXPIRE", 1)]
    assert {key: count for key, count in by_hour if count} == {
        hour("00"): 1,
        hour("01"): 1,
        hour("23"): 1,
    }
    assert total == 3


async def test_another_orgs_events_are_not_counted(db, acme_key, other_key):
    await make_events(db, "other", TIMED)

    for by in CountBy:
        buckets, total = await counted(db, by)
        assert total == 0 and all(count == 0 for _, count in buckets)


async def test_an_empty_window_has_no_buckets(db, acme_key):
    await make_events(db, "acme", TIMED)
    moment = datetime(2023, 11, 18, 0, 30, tzinfo=UTC)

    for by in CountBy:
        assert await counted(db, by, Window(moment, moment)) == ([], 0)


@pytest.mark.parametrize(("by", "span"), [(CountBy.HOUR, "hours"), (CountBy.DAY, "days")])
async def test_a_window_may_touch_at_most_1000_time_buckets(db, acme_key, by, span):
    since = datetime(2023, 1, 1, tzinfo=UTC)
    widest = Window(since, since + timedelta(**{span: 1000}))
    off_the_hour = Window(since + timedelta(minutes=30), widest.until + timedelta(minutes=30))

    buckets, _ = await counted(db, by, widest)
    with pytest.raises(InvalidCounts) as refused:
        await counted(db, by, off_the_hour)

    assert len(buckets) == 1000
    assert refused.value.part == "until"


async def test_time_buckets_at_the_end_of_the_calendar_do_not_overflow(db, acme_key):
    last_day = Window(datetime(9999, 12, 31, tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=UTC))

    assert await counted(db, CountBy.DAY, last_day) == ([("9999-12-31T00:00:00Z", 0)], 0)


# The roll-ups against the rows: every answer equals a count over the stored events.

START = datetime(2023, 11, 17, tzinfo=UTC)
CONTAINERS = ["box01", "box02", "box03", "box04", "box05"]
# Window ends: on the hour, just inside and outside hours and days, in the first and last part
# of an hour (an edge read from the events, or the hour's roll-up less the rest), the half hour.
INSTANTS = [
    START + offset
    for offset in (
        timedelta(0),
        timedelta(hours=3, minutes=10),
        timedelta(hours=3, minutes=30),
        timedelta(hours=3, minutes=50),
        timedelta(hours=4, minutes=20),
        timedelta(hours=6, microseconds=-1),
        timedelta(hours=24),
        timedelta(hours=30, minutes=45, seconds=30, microseconds=500_000),
        timedelta(hours=50),
    )
]
WINDOWS_AROUND = [
    Window(since, until)
    for since, until in product([None, *INSTANTS], [None, *INSTANTS])
    if since is None or until is None or since < until
] + [Window(INSTANTS[1], INSTANTS[1]), Window(INSTANTS[2], INSTANTS[1])]
SELECTIONS = [
    *[(event_filter, None) for event_filter in [None, *EventFilter]],
    (None, "box01"),
    (EventFilter.FAIL, "box01"),
    (EventFilter.EXPIRE, "box02"),
    (None, "nowhere"),
]


def scattered_events(seed: int, count: int) -> list[tuple[str, NewEvent]]:
    """Events over 50 hours from START, some stamped exactly at the window ends."""
    rng = random.Random(seed)
    moments = [
        START + timedelta(microseconds=rng.randrange(50 * 3600 * 10**6)) for _ in range(count)
    ]
    moments += INSTANTS + [START + timedelta(hours=24, microseconds=1)]
    return [
        (
            rng.choice(CONTAINERS[:1] * 4 + CONTAINERS),
            NewEvent(
                event_type=rng.choice(list(EventType)),
                status=rng.choice([EventStatus.SUCCESS] * 3 + [EventStatus.FAILURE]),
                timestamp=at,
            ),
        )
        for at in moments
    ]


async def log_out_of_order(db: Database, client, key: str, items: list[tuple[str, NewEvent]]):
    """Store events in shuffled batches, so most land in hours already counted; a few through
    the REST POST."""
    rng = random.Random(len(items))
    items = items[:]
    rng.shuffle(items)
    posted, items = items[:8], items[8:]
    while items:
        size = rng.randint(1, 40)
        async with db.session() as session:
            await log_events(session, org_id="acme", items=items[:size])
        items = items[size:]
    for container_id, new_event in posted:
        answer = await client.post(
            f"/orgs/acme/containers/{container_id}/events",
            json={**new_event.model_dump(mode="json"), "actor": None},
            headers=auth(key),
        )
        assert answer.status_code == 200, answer.text


async def stored_rows(db: Database, org_id: str | None = "acme") -> Sequence[Any]:
    query = select(events.c.org_id, events.c.container_id, events.c.event_type)
    query = query.add_columns(events.c.status, events.c.timestamp)
    if org_id is not None:
        query = query.where(events.c.org_id == org_id)
    async with db.session() as session:
        return (await session.execute(query)).all()


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _selected(rows: Sequence[Any], event_filter, container_id, window: Window) -> list[Any]:
    return [
        row
        for row in rows
        if (
            event_filter is None
            or (event_filter is EventFilter.FAIL and row.status == "FAILURE")
            or row.event_type == event_filter.value
        )
        and (container_id is None or row.container_id == container_id)
        and (window.since is None or row.timestamp >= window.since)
        and (window.until is None or row.timestamp < window.until)
    ]


def expected_counts(rows: Sequence[Any], by: CountBy, window: Window, event_filter, container_id):
    """What event_counts must answer, counted from the rows themselves."""
    selected = _selected(rows, event_filter, container_id, window)
    if by in (CountBy.HOUR, CountBy.DAY):
        assert window.since is not None and window.until is not None
        floor = _hour_floor if by is CountBy.HOUR else lambda at: _hour_floor(at).replace(hour=0)
        step = timedelta(hours=1) if by is CountBy.HOUR else timedelta(days=1)
        found = Counter(floor(row.timestamp) for row in selected)
        start, buckets = floor(window.since), []
        while start < window.until and window.since < window.until:
            buckets.append((start.replace(tzinfo=None).isoformat() + "Z", found[start]))
            if datetime.max.replace(tzinfo=UTC) - start < step:
                break
            start += step
        return buckets, len(selected)
    column = {CountBy.TYPE: "event_type", CountBy.STATUS: "status"}.get(by, "container_id")
    found = Counter(getattr(row, column) for row in selected)
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    return ranked[: counts.MAX_BUCKETS], len(selected)


async def assert_counts_match_the_rows(
    db: Database, by: CountBy | None, windows: list[Window], selections=SELECTIONS
):
    rows = await stored_rows(db)
    for window, (event_filter, container_id) in product(windows, selections):
        options = {"event_filter": event_filter, "container_id": container_id}
        if by is None:
            total = await total_of(db, window=window, **options)
            assert total == len(_selected(rows, event_filter, container_id, window)), options
        elif by in BUCKET_GROUPINGS and (window.since is None or window.until is None):
            continue
        else:
            found = await counted(db, by, window, **options)
            assert found == expected_counts(rows, by, window, **options), (window, options)


BUCKET_GROUPINGS = (CountBy.HOUR, CountBy.DAY)


@pytest.mark.parametrize("by", [None, *CountBy], ids=lambda by: f"by_{by}" if by else "total")
async def test_every_count_equals_a_count_of_the_stored_rows(
    client, db, acme_key, other_key, by, monkeypatch
):
    await log_out_of_order(db, client, acme_key, scattered_events(seed=1, count=300))
    await make_events(db, "other", MIXED)

    await assert_counts_match_the_rows(db, by, WINDOWS_AROUND)
    if by is CountBy.CONTAINER:
        monkeypatch.setattr(counts, "MAX_BUCKETS", 2)
        await assert_counts_match_the_rows(db, by, WINDOWS_AROUND[::5])


async def test_counts_reach_the_first_and_last_hours_of_the_calendar_and_before_1970(
    client, db, acme_key
):
    first = datetime(1, 1, 1, tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    last = datetime(9999, 12, 31, 23, tzinfo=UTC)
    minutes = [timedelta(minutes=minute) for minute in (0, 20, 50, 60)]
    moments = (
        [first + minute for minute in minutes]
        + [epoch - minute for minute in minutes]
        + [last + minute for minute in minutes[:3]]
        + [last - timedelta(microseconds=1), datetime.max.replace(tzinfo=UTC)]
    )
    await make_events(
        db, "acme", [("box01", {"event_type": "ACCESS", "timestamp": at}) for at in moments]
    )
    ends = [*moments, last + timedelta(minutes=40), epoch - timedelta(minutes=75)]
    windows = [Window(since, until) for since, until in product([None, *ends], [None, *ends])]
    narrow = [w for w in windows if w.since and w.until and w.until - w.since < timedelta(days=5)]

    selections = [(None, None), (EventFilter.ACCESS, "box01")]
    for by in [None, CountBy.TYPE]:
        await assert_counts_match_the_rows(db, by, windows, selections)
    for by in BUCKET_GROUPINGS:
        await assert_counts_match_the_rows(db, by, narrow, selections)


async def test_an_event_logged_late_is_counted_in_the_hour_it_happened(db, acme_key):
    morning = datetime(2023, 11, 18, 9, tzinfo=UTC)
    await make_events(db, "acme", [("c1", {"event_type": "ACCESS", "timestamp": hour("12")})])
    await make_events(
        db, "acme", [("c1", {"event_type": "BLOCK", "timestamp": morning + timedelta(minutes=15)})]
    )
    window = Window(morning, datetime(2023, 11, 18, 13, tzinfo=UTC))

    assert await counted(db, CountBy.HOUR, window) == (
        [(hour("09"), 1), (hour("10"), 0), (hour("11"), 0), (hour("12"), 1)],
        2,
    )
    assert await counted(db, CountBy.TYPE, window) == ([("ACCESS", 1), ("BLOCK", 1)], 2)


async def roll_up_contents(db: Database) -> dict[str, Counter[tuple[Any, ...]]]:
    """Each roll-up table's rows, as {key: count}."""
    found = {}
    async with db.session() as session:
        for table in ROLL_UPS:
            rows = (await session.execute(select(table))).all()
            found[table.name] = Counter({tuple(row[:-1]): row[-1] for row in rows})
    return found


def _hour_number(moment: datetime) -> int:
    """The hours from 1970-01-01T00:00Z to the start of the moment's hour, by the calendar."""
    return int((_hour_floor(moment) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) // 3600


def roll_ups_of(rows: Sequence[Any]) -> dict[str, Counter[tuple[Any, ...]]]:
    """What each roll-up table must hold for these rows, counted from the rows themselves: a
    container's days start every 6 hours and last 24, so each hour is in four of them."""
    found: dict[str, Counter[tuple[Any, ...]]] = {table.name: Counter() for table in ROLL_UPS}
    for row in rows:
        hour = _hour_number(row.timestamp)
        values = {**row._asdict(), "hour": hour}
        for table in ROLL_UPS:
            names = table.primary_key.columns.keys()
            if "start_hour" not in names:
                found[table.name][tuple(values[name] for name in names)] += 1
                continue
            for back in (0, 6, 12, 18):
                found[table.name][row.org_id, hour - hour % 6 - back, row.container_id] += 1
    return found


async def test_the_roll_ups_hold_exactly_the_stored_events(client, db, acme_key, other_key):
    await log_out_of_order(db, client, acme_key, scattered_events(seed=2, count=200))
    await make_events(db, "other", MIXED)

    assert await roll_up_contents(db) == roll_ups_of(await stored_rows(db, org_id=None))


class Stored(NamedTuple):
    org_id: str
    container_id: str
    event_type: str
    status: str
    timestamp: datetime


def test_the_bench_loader_fills_the_roll_ups_as_log_events_would(tmp_path: Path):
    path = tmp_path / "events.db"
    load(path, 3000, seed=3, quiet=True)

    with sqlite3.connect(path) as connection:
        query = "SELECT org_id, container_id, event_type, status, timestamp FROM events"
        rows = [
            Stored(*row[:4], datetime.fromisoformat(row[4] + "+00:00"))
            for row in connection.execute(query)
        ]
        found = {}
        for table in ROLL_UPS:
            rows_of_table = connection.execute(f"SELECT * FROM {table.name}")
            found[table.name] = Counter({tuple(row[:-1]): row[-1] for row in rows_of_table})
    assert found == roll_ups_of(rows)


async def refuse_inserts(db: Database, table: Table) -> None:
    """Make the database itself refuse every INSERT (upserts too) into `table`: a trigger."""
    name = table.name
    async with db.engine.begin() as connection:
        if db.dialect == "sqlite":
            await connection.exec_driver_sql(
                f"CREATE TRIGGER refuse_{name} BEFORE INSERT ON {name} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            return
        await connection.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
        await connection.exec_driver_sql(
            f"CREATE TRIGGER refuse_{name} BEFORE INSERT ON {name} "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


@pytest.mark.parametrize("table", [events, *ROLL_UPS], ids=lambda table: table.name)
async def test_a_write_that_fails_leaves_the_events_and_their_counts_as_they_were(
    db, acme_key, table
):
    await make_events(db, "acme", TIMED)
    before = await roll_up_contents(db), await stored_rows(db)
    await refuse_inserts(db, table)

    with pytest.raises(DBAPIError, match="refused"):
        await make_events(db, "acme", TIMED[:3] + [("c9", {"event_type": "CREATE"})])

    assert (await roll_up_contents(db), await stored_rows(db)) == before
    assert await roll_up_contents(db) == roll_ups_of(await stored_rows(db))


# REST twin


async def get_counts(client, key: str, **params: str):
    return await client.get(COUNTS, params=params, headers=auth(key))


async def test_the_rest_twin_answers_the_buckets_and_the_total(client, db, acme_key):
    await make_events(db, "acme", TIMED)

    answer = await get_counts(client, acme_key, by="type", **DAY)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "by": "type",
        "since": DAY["since"],
        "until": DAY["until"],
        "counts": [
            {"key": "ACCESS", "count": 3},
            {"key": "BLOCK", "count": 1},
            {"key": "CREATE", "count": 1},
            {"key": "EXPIRE", "count": 1},
        ],
        "total": 6,
    }


@pytest.mark.parametrize("by", list(CountBy))
async def test_the_rest_twin_answers_what_storage_counts(client, db, acme_key, by):
    await make_events(db, "acme", TIMED)

    answer = await get_counts(client, acme_key, by=by.value.lower(), **DAY)

    buckets, total = await counted(db, by)
    assert answer.status_code == 200, answer.text
    assert [(item["key"], item["count"]) for item in answer.json()["counts"]] == buckets
    assert answer.json()["total"] == total


async def test_by_and_filter_are_matched_without_regard_to_case(client, db, acme_key):
    await make_events(db, "acme", TIMED)

    answer = await get_counts(client, acme_key, by="Status", filter="fail", **DAY)

    assert answer.json()["by"] == "status"
    assert answer.json()["counts"] == [{"key": "FAILURE", "count": 2}]


async def test_the_rest_twin_takes_a_container_and_offsets_in_the_window(client, db, acme_key):
    await make_events(db, "acme", TIMED)
    window = {"since": "2023-11-18T02:00:00+02:00", "until": "2023-11-18T03:00:00+02:00"}

    answer = await get_counts(client, acme_key, by="hour", container_id="c1", **window)

    assert answer.json()["since"] == "2023-11-18T00:00:00Z"
    assert answer.json()["counts"] == [{"key": hour("00"), "count": 1}]


BAD_QUERIES = {
    "missing_since": ({"until": DAY["until"], "by": "type"}, "since"),
    "missing_until": ({"since": DAY["since"], "by": "type"}, "until"),
    "missing_by": (DAY, "by"),
    "unknown_by": ({**DAY, "by": "week"}, "by"),
    "by_unicode_look_alike": ({**DAY, "by": "\u017ftatus"}, "by"),
    "unknown_filter": ({**DAY, "by": "type", "filter": "update"}, "filter"),
    "naive_since": ({**DAY, "by": "type", "since": "2023-11-18T00:00:00"}, "since"),
    "garbage_until": ({**DAY, "by": "type", "until": "tomorrow"}, "until"),
    "until_before_since": ({"since": DAY["until"], "until": DAY["since"], "by": "day"}, "until"),
    "over_1000_hours": ({**DAY, "until": "2024-01-01T00:00:00Z", "by": "hour"}, "until"),
    "bad_container_id": ({**DAY, "by": "type", "container_id": "x" * 129}, "container_id"),
    "paging_parameter": ({**DAY, "by": "type", "limit": "10"}, "limit"),
    "order_parameter": ({**DAY, "by": "type", "order": "asc"}, "order"),
}


@pytest.mark.parametrize(("params", "field"), BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
async def test_bad_input_answers_400_naming_the_field_before_any_counting(
    client, db, acme_key, params, field
):
    await make_events(db, "acme", TIMED)

    with SQLStatements(db) as seen:
        answer = await get_counts(client, acme_key, **params)

    assert_problem(answer, 400, field)
    assert counting(seen) == []


async def test_a_repeated_parameter_answers_400(client, acme_key):
    answer = await client.get(
        f"{COUNTS}?by=type&by=status&since={DAY['since']}&until={DAY['until']}",
        headers=auth(acme_key),
    )

    assert_problem(answer, 400, "by")


async def test_without_a_key_the_counts_answer_401(client, db, acme_key):
    answer = await client.get(COUNTS, params={**DAY, "by": "type"})

    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_another_orgs_counts_answer_404_as_if_it_did_not_exist(
    client, db, acme_key, other_key
):
    await make_events(db, "acme", TIMED)
    params = {**DAY, "by": "type"}

    foreign = await client.get(COUNTS, params=params, headers=auth(other_key))
    unknown = await client.get("/orgs/ghost/events/counts", params=params, headers=auth(acme_key))

    assert_problem(foreign, 404)
    assert_problem(unknown, 404)
    assert foreign.json()["detail"].replace("acme", "ghost") == unknown.json()["detail"]


async def test_the_counts_route_is_its_own_and_leaves_the_event_list_alone(client, db, acme_key):
    await make_events(db, "acme", TIMED)

    listed_events = await client.get("/orgs/acme/events", headers=auth(acme_key))
    posted = await client.post(COUNTS, json={"event_type": "ACCESS"}, headers=auth(acme_key))

    assert len(listed_events.json()["events"]) == len(TIMED)
    assert_problem(posted, 405)


async def test_every_documented_count_parameter_value_is_accepted_and_answers_as_documented(
    client, db, acme_key
):
    await make_events(db, "acme", TIMED)
    document = (await client.get("/openapi.json")).json()
    parameters = document["paths"][COUNTS_PATH]["get"]["parameters"]
    samples = {
        "since": ["2023-11-18T00:00:00Z", "2023-11-18T02:00:00+02:00"],
        "until": ["2023-11-19T00:00:00Z", "2023-11-19T02:00:00+02:00"],
        "container_id": ["c1"],
    }

    for parameter in parameters:
        if parameter["in"] != "query":
            continue
        for value in parameter["schema"].get("enum", samples.get(parameter["name"], [])):
            params = {**DAY, "by": "day", parameter["name"]: value}
            answer = await client.get(COUNTS, params=params, headers=auth(acme_key))
            assert answer.status_code == 200, (params, answer.text)
            assert_documented(document, COUNTS_PATH, "get", answer)
    required = {parameter["name"] for parameter in parameters if parameter.get("required")}
    assert required == {"org_id", "since", "until", "by"}
