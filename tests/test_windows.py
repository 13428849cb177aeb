"""Window pages (since/until) through zones and late events list exactly the window's events."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from storage import events as storage_events
from storage.database import Database
from storage.domain import EventFilter, NewEvent, Order
from storage.events import EventRecord, Page, Window, list_events, log_events
from storage.windows import LATE_AFTER, is_late
from tests.factories import make_org

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CONTAINERS = ("vault", "bucket", "share")
KINDS = (("ACCESS", "SUCCESS"), ("ACCESS", "FAILURE"), ("BLOCK", "SUCCESS"), ("CREATE", "SUCCESS"))


async def receive_events_over_hours(
    db: Database, monkeypatch: pytest.MonkeyPatch, rng: random.Random
) -> list[EventRecord]:
    """Three hours of arrivals, a batch a minute: most events stamped up to two minutes before
    they arrive, some late (backfilled hours or a day back) and some stamped in the future."""
    stored: list[EventRecord] = []
    for minute in range(180):
        received = START + timedelta(minutes=minute, seconds=rng.randrange(60))
        monkeypatch.setattr(storage_events, "utcnow", lambda received=received: received)
        items = []
        for _ in range(rng.randrange(1, 5)):
            kind = rng.choice(
                [timedelta(seconds=rng.randrange(120))] * 8
                + [timedelta(hours=rng.uniform(0.5, 26)), -timedelta(hours=rng.uniform(0.3, 2))]
            )
            event_type, status = rng.choice(KINDS)
            new_event = NewEvent(event_type=event_type, status=status, timestamp=received - kind)
            items.append((rng.choice(CONTAINERS), new_event))
        async with db.session() as session:
            stored += await log_events(session, org_id="acme", items=items)
    return stored


def windows(rng: random.Random) -> list[Window]:
    def moment() -> datetime:
        return START + timedelta(seconds=rng.randrange(-3600, 4 * 3600))

    found = [
        Window(START + timedelta(hours=1), START + timedelta(hours=2)),  # whole hours
        Window(START + timedelta(minutes=70), START + timedelta(minutes=75)),  # within an hour
        Window(START + timedelta(minutes=50, seconds=30), START + timedelta(minutes=130)),
        Window(since=START + timedelta(minutes=150)),
        Window(until=START + timedelta(minutes=20)),
        Window(START - timedelta(days=2), START + timedelta(days=2)),
        # Before the first arrival: no zones, only backfilled (late) events.
        Window(START - timedelta(hours=20), START - timedelta(hours=1)),
        Window(until=START - timedelta(hours=1)),
        # After the last arrival: no zones, only events stamped ahead of their arrival.
        Window(since=START + timedelta(hours=3, minutes=1)),
    ]
    for _ in range(6):
        since, until = sorted((moment(), moment()))
        found.append(Window(since, until))
    return found


def expected(
    stored: list[EventRecord],
    window: Window,
    event_filter: EventFilter | None,
    container: str | None,
    order: Order,
) -> list[int]:
    def selected(row: EventRecord) -> bool:
        if window.since is not None and row["timestamp"] < window.since:
            return False
        if window.until is not None and row["timestamp"] >= window.until:
            return False
        if container is not None and row["container_id"] != container:
            return False
        if event_filter is EventFilter.FAIL:
            return row["status"] == "FAILURE"
        return event_filter is None or row["event_type"] == event_filter.value

    ids = sorted(row["id"] for row in stored if selected(row))
    return ids[::-1] if order is Order.DESC else ids


async def every_page(
    db: Database,
    window: Window,
    event_filter: EventFilter | None,
    container: str | None,
    order: Order,
) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        async with db.reader() as reader:
            page = await list_events(
                reader,
                org_id="acme",
                event_filter=event_filter,
                container_id=container,
                window=window,
                page=Page.parse(limit=7, cursor=cursor, order=order),
            )
        ids += [row["id"] for row in page.rows]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def test_window_pages_list_exactly_the_windows_events_late_or_not(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    await make_org(db, "acme")
    stored = await receive_events_over_hours(db, monkeypatch, rng)
    late = [row for row in stored if is_late(row["timestamp"], row["received_at"])]
    # The data exercises both ways a window page finds its events.
    assert 0 < len(late) < len(stored) // 2

    seen_late = seen_timely = 0
    for window in windows(rng):
        for event_filter, container in [
            (None, None),
            *((f, None) for f in (EventFilter.ACCESS, EventFilter.BLOCK, EventFilter.FAIL)),
            (None, "share"),
            (EventFilter.FAIL, "vault"),
        ]:
            for order in Order:
                want = expected(stored, window, event_filter, container, order)
                got = await every_page(db, window, event_filter, container, order)
                assert got == want, (window, event_filter, container, order)
                late_ids = {row["id"] for row in late}
                seen_late += len(late_ids.intersection(got))
                seen_timely += len(set(got) - late_ids)
    assert seen_late and seen_timely


async def test_an_event_stamped_far_from_its_arrival_is_listed_late(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_org(db, "acme")
    monkeypatch.setattr(storage_events, "utcnow", lambda: START)
    on_time = NewEvent(event_type="ACCESS", timestamp=START - LATE_AFTER)
    backfilled = NewEvent(event_type="ACCESS", timestamp=START - LATE_AFTER - timedelta(seconds=1))
    async with db.session() as session:
        rows = await log_events(session, org_id="acme", items=[("c", on_time), ("c", backfilled)])
    assert [is_late(row["timestamp"], row["received_at"]) for row in rows] == [False, True]
    # Both are found by a window around their time, whichever way it is read.
    window = Window(START - timedelta(hours=1), START)
    for order in Order:
        ids = await every_page(db, window, None, None, order)
        assert sorted(ids) == sorted(row["id"] for row in rows)


async def test_a_window_finds_the_events_of_the_minutes_and_hours_it_cuts_through(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_org(db, "acme")
    stored: list[EventRecord] = []
    for minute in range(150):  # one event a minute, at half past, stamped as it arrives
        at = START + timedelta(minutes=minute, seconds=30)
        monkeypatch.setattr(storage_events, "utcnow", lambda at=at: at)
        async with db.session() as session:
            stored += await log_events(
                session, org_id="acme", items=[("c", NewEvent(event_type="ACCESS", timestamp=at))]
            )
    for since, until in [
        (timedelta(minutes=10, seconds=15), timedelta(minutes=100, seconds=45)),
        (timedelta(minutes=59, seconds=31), timedelta(minutes=120, seconds=31)),
        (timedelta(minutes=61, seconds=29), timedelta(minutes=62, seconds=31)),
    ]:
        window = Window(START + since, START + until)
        for order in Order:
            want = expected(stored, window, None, None, order)
            assert want and await every_page(db, window, None, None, order) == want
