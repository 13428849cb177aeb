"""Reading and writing events: keyset pages over the read-path indexes, atomic writes."""

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from itertools import repeat
from typing import Any, TypedDict

import orjson
from sqlalchemy import (
    CTE,
    Column,
    ColumnElement,
    CompoundSelect,
    Executable,
    Integer,
    Select,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage import windows
from storage.cursors import InvalidCursor, decode_event_cursor, encode_event_cursor
from storage.domain import EventFilter, EventStatus, NewEvent, Order
from storage.driver import Reader, chunks, execute_many
from storage.models import UTCDateTime, containers, events, late_events, utcnow
from storage.notifications import Committed, notify_committed
from storage.sql import least_and_greatest

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Window:
    """An optional [since, until) range on the event timestamp."""

    since: datetime | None = None
    until: datetime | None = None


class InvalidPage(ValueError):
    """A page request out of bounds; `part` is "limit" or "cursor"."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class Page:
    """Where a page starts (after an event id), how long it is and which way it runs."""

    limit: int = DEFAULT_PAGE_SIZE
    after_id: int | None = None
    order: Order = Order.DESC

    @classmethod
    def parse(cls, *, limit: int | None, cursor: str | None, order: Order = Order.DESC) -> "Page":
        """Build a page from client input, or raise InvalidPage naming the bad part."""
        if limit is None:
            limit = DEFAULT_PAGE_SIZE
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidPage("limit", f"must be between 1 and {MAX_PAGE_SIZE}")
        try:
            after_id = None if cursor is None else decode_event_cursor(cursor)
        except InvalidCursor as error:
            raise InvalidPage("cursor", str(error)) from None
        return cls(limit=limit, after_id=after_id, order=order)


class EventRecord(TypedDict):
    """A stored event, as the read and write functions return it.

    A plain dict whose keys are the legacy specification's field names, in its order: the
    REST shim answers it as it is, with no copy per event.
    """

    id: int
    org_id: str
    container_id: str
    event_type: str
    status: str
    timestamp: datetime
    received_at: datetime
    actor: str | None
    details: dict[str, Any]  # {} when the event has none
    key_id: str | None  # the API key that wrote it; None when written without one


EVENT_COLUMNS = tuple(events.c.keys())
assert tuple(EventRecord.__annotations__) == EVENT_COLUMNS, "EventRecord follows the table"


def event_record(values: Mapping[Any, Any]) -> EventRecord:
    """A record from decoded column values (a SQLAlchemy row mapping, say)."""
    record = EventRecord(**values)  # type: ignore[typeddict-item]
    if record["details"] is None:
        record["details"] = {}
    return record


def _sqlite_event_records(rows: Sequence[Any]) -> list[EventRecord]:
    """SQLite rows of `select(events)`: times are naive UTC text, details JSON text.

    The conversions are those of the column types' result processors (UTCDateTime, JSON),
    written inline: a page decodes 300 values, and their call chains cost as much again.
    tests/test_storage.py checks both give the same records.
    """
    parse_time, parse_json = datetime.fromisoformat, orjson.loads
    return [
        {
            "id": event_id,
            "org_id": org_id,
            "container_id": container_id,
            "event_type": event_type,
            "status": status,
            "timestamp": parse_time(timestamp + "+00:00"),
            "received_at": parse_time(received_at + "+00:00"),
            "actor": actor,
            # SQLAlchemy's JSON type stores a None given to it as the JSON text null.
            "details": (parse_json(details) or {}) if details is not None else {},
            "key_id": key_id,
        }
        for (
            event_id,
            org_id,
            container_id,
            event_type,
            status,
            timestamp,
            received_at,
            actor,
            details,
            key_id,
        ) in rows
    ]


def _postgresql_event_records(rows: Sequence[Any]) -> list[EventRecord]:
    """asyncpg rows of `select(events)`: times arrive as UTC datetimes, details decoded.

    asyncpg writes the calendar's last moment (datetime.max in UTC) as PostgreSQL's
    'infinity', which sorts and compares as that moment would, and reads it back without a
    zone: such a timestamp gets its UTC back.
    """
    records = [event_record(dict(zip(EVENT_COLUMNS, row, strict=True))) for row in rows]
    for record in records:
        if record["timestamp"].tzinfo is None:
            record["timestamp"] = record["timestamp"].replace(tzinfo=UTC)
    return records


EVENT_DECODERS = {"sqlite": _sqlite_event_records, "postgresql": _postgresql_event_records}


@dataclass(frozen=True)
class EventPage:
    rows: Sequence[EventRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class EventRows:
    """A page of the driver's own rows: values in EVENT_COLUMNS order, as EVENT_DECODERS[dialect]
    takes them (SQLite's times and details as text, asyncpg's decoded)."""

    rows: Sequence[Any]
    next_cursor: str | None
    dialect: str


def filter_column(event_filter: EventFilter) -> tuple[Column[str], str]:
    """The column and value a filter selects: FAIL is any FAILURE status, others an event type."""
    if event_filter is EventFilter.FAIL:
        return events.c.status, EventStatus.FAILURE.value
    return events.c.event_type, event_filter.value


def event_matches(
    row: EventRecord, event_filter: EventFilter | None, container_id: str | None
) -> bool:
    """Whether list_events with this filter and container would return the row."""
    if container_id is not None and row["container_id"] != container_id:
        return False
    if event_filter is None:
        return True
    column, value = filter_column(event_filter)
    return row[column.key] == value  # type: ignore[literal-required]


@dataclass(frozen=True)
class PageShape:
    """What varies between page statements; each shape is compiled once per dialect."""

    filter_column: str | None
    container: bool
    since: bool
    until: bool
    after: bool
    order: Order

    def statement(self, dialect_name: str) -> Select[Any] | CompoundSelect:
        if self.since or self.until:
            return self._window_statement(dialect_name)
        query = select(events).where(*self._criteria(lambda column: column))
        return query.order_by(self._order_by()).limit(bindparam("limit", type_=Integer()))

    def _criteria(
        self, column: Callable[[Column[Any]], ColumnElement[Any]]
    ) -> list[ColumnElement[bool]]:
        """The page's conditions, each on `column(c)` so a caller can wrap any column."""
        criteria = [column(events.c.org_id) == bindparam("org_id")]
        if self.filter_column is not None:
            criteria.append(column(events.c[self.filter_column]) == bindparam("filter_value"))
        if self.container:
            criteria.append(column(events.c.container_id) == bindparam("container_id"))
        if self.after:
            after = bindparam("after_id", type_=events.c.id.type)
            event_id = column(events.c.id)
            criteria.append(event_id < after if self.order is Order.DESC else event_id > after)
        return criteria

    def _order_by(self, by: ColumnElement[Any] = events.c.id) -> ColumnElement[Any]:
        return by.desc() if self.order is Order.DESC else by

    def _window_statement(self, dialect_name: str) -> CompoundSelect:
        # See storage/windows.py: a walk of the page's read-path id index inside the id range
        # of the window's zones, merged in id order with the window's late events that lie
        # outside that range (the walk finds the others). Both arms yield rows in page order,
        # so SQLite merges them and reads only the rows the page keeps.
        hidden = _indexed_elsewhere(dialect_name)
        zones = windows.zone_range()
        walk = (
            select(events)
            .where(*replace(self, after=False)._criteria(lambda column: column))
            .where(*self._walk_range(dialect_name, zones))
            .where(*self._in_window(hidden(events.c.timestamp)))
        )
        # Late events repeat the columns pages select by: picked from their index alone.
        late_ids = (
            select(late_events.c.id)
            .where(*self._criteria(lambda column: late_events.c[column.key]))
            .where(*self._in_window(late_events.c.timestamp))
            .where(*self._outside_zones(late_events.c.id, zones))
        )
        late = select(events).where(events.c.id.in_(late_ids))
        limit = bindparam("limit", type_=Integer())
        if dialect_name == "postgresql":
            # PostgreSQL (15) sorts a top-level UNION ALL as a whole: over a wide window it
            # read every row of the org's walk to keep 101 (2.3 s on 10M events, EXPLAIN
            # ANALYZE). Each arm ordered and limited becomes a Merge Append of two backward
            # index scans that stops at the page's end (0.16 ms).
            walk = walk.order_by(self._order_by()).limit(limit)
            late = late.order_by(self._order_by()).limit(limit)
        page = union_all(walk, late)
        return page.order_by(self._order_by(page.selected_columns.id)).limit(limit)

    def _walk_range(self, dialect_name: str, zones: CTE) -> list[ColumnElement[bool]]:
        """At most one lower and one upper bound on id: the zones' and the cursor's together.

        Given a third bound, SQLite's planner walks (org_id, id) and tests each row's filter
        instead of walking the filter's own index.
        """
        lowest, highest = least_and_greatest(dialect_name)
        lower: list[ColumnElement[int]] = []
        upper: list[ColumnElement[int]] = []
        if self.since:
            lower.append(select(zones.c.low).scalar_subquery())
        if self.until:
            upper.append(select(zones.c.high).scalar_subquery())
        if self.after:
            after = bindparam("after_id", type_=events.c.id.type)
            (upper if self.order is Order.DESC else lower).append(
                after + (-1 if self.order is Order.DESC else 1)
            )
        bounds = []
        if lower:
            bounds.append(events.c.id >= (lower[0] if len(lower) == 1 else highest(*lower)))
        if upper:
            bounds.append(events.c.id <= (upper[0] if len(upper) == 1 else lowest(*upper)))
        return bounds

    def _outside_zones(self, event_id: ColumnElement[int], zones: CTE) -> list[ColumnElement[bool]]:
        """Ids the walk does not reach: outside the id range of the window's zones."""
        criteria: list[ColumnElement[bool]] = []
        if self.since:
            criteria.append(event_id < select(zones.c.low).scalar_subquery())
        if self.until:
            criteria.append(event_id > select(zones.c.high).scalar_subquery())
        return [or_(*criteria)]

    def _in_window(self, timestamp: ColumnElement[datetime]) -> list[ColumnElement[bool]]:
        criteria = []
        if self.since:
            criteria.append(timestamp >= bindparam("since", type_=UTCDateTime))
        if self.until:
            criteria.append(timestamp < bindparam("until", type_=UTCDateTime))
        return criteria


def _indexed_elsewhere(dialect_name: str) -> Callable[[Column[Any]], ColumnElement[Any]]:
    """Hide columns from SQLite's index choice, so a page uses the index meant for it.

    A unary + is SQLite's documented way to keep a term from choosing an index; the values
    compared are unchanged. PostgreSQL's planner weighs the choice with statistics.
    """
    if dialect_name != "sqlite":
        return lambda column: column
    return lambda column: type_coerce(
        literal_column(f"+{column.table.name}.{column.name}"), column.type
    )


async def list_events(
    reader: Reader,
    *,
    org_id: str,
    event_filter: EventFilter | None = None,
    container_id: str | None = None,
    window: Window = Window(),
    page: Page = Page(),
) -> EventPage:
    """One page of an org's events, newest first unless `page.order` is ASC.

    Ordered by id, which only grows: paging never skips or repeats while new events arrive.
    """
    found = await list_event_rows(
        reader,
        org_id=org_id,
        event_filter=event_filter,
        container_id=container_id,
        window=window,
        page=page,
    )
    return EventPage(rows=EVENT_DECODERS[found.dialect](found.rows), next_cursor=found.next_cursor)


async def list_event_rows(
    reader: Reader,
    *,
    org_id: str,
    event_filter: EventFilter | None = None,
    container_id: str | None = None,
    window: Window = Window(),
    page: Page = Page(),
) -> "EventRows":
    """list_events' page as the driver returns it, for a caller that decodes rows itself."""
    column, value = (None, None) if event_filter is None else filter_column(event_filter)
    shape = PageShape(
        filter_column=None if column is None else column.key,
        container=container_id is not None,
        since=window.since is not None,
        until=window.until is not None,
        after=page.after_id is not None,
        order=page.order,
    )
    values = {
        "org_id": org_id,
        "filter_value": value,
        "container_id": container_id,
        "since": window.since,
        "until": window.until,
        "after_id": page.after_id,
        # One more than asked: whether it comes back tells if there is a next page.
        "limit": page.limit + 1,
    }
    if shape.since or shape.until:
        values.update(windows.zone_parameters(window.since, window.until))

    def statement() -> Select[Any] | CompoundSelect:
        return shape.statement(reader.dialect.name)

    found = await reader.fetch_raw(shape, statement, values)
    rows = found[: page.limit]
    # Only the last row's cursor is encoded here; GraphQL edges encode theirs when asked.
    next_cursor = encode_event_cursor(rows[-1][0]) if len(found) > page.limit else None
    return EventRows(rows=rows, next_cursor=next_cursor, dialect=reader.dialect.name)


@cache
def _upsert_containers(dialect: str) -> Executable:
    """Register containers, or move their last_event_at forward; one parameter set each."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    _, latest = least_and_greatest(dialect)
    statement = insert(containers)
    return statement.on_conflict_do_update(
        index_elements=[containers.c.org_id, containers.c.id],
        set_={
            "last_event_at": latest(containers.c.last_event_at, statement.excluded.last_event_at)
        },
    )


_INSERT_EVENTS = events.insert()
_WRITTEN_COLUMNS = EVENT_COLUMNS[1:]  # all but the id, which the database assigns
_INSERT_RETURNING_IDS = events.insert().returning(events.c.id, sort_by_parameter_order=True)

# PostgreSQL advisory locks that a transaction storing an org's events holds from before its
# first write until its commit, one per org: the two-key form, this class (the bytes of "evnt"
# in ASCII) and a 32-bit hash of the org id. Anything else sharing the database must not take
# advisory locks of class 0x65766E74 (1702260340) for its own ends.
EVENT_ORDER_LOCK_CLASS = 0x6576_6E74
_TAKE_EVENT_ORDER_LOCK = select(
    func.pg_advisory_xact_lock(
        literal(EVENT_ORDER_LOCK_CLASS, Integer()), bindparam("org_lock", type_=Integer())
    )
)


def event_order_lock(org_id: str) -> int:
    """The org's key in EVENT_ORDER_LOCK_CLASS: its id's CRC-32, as PostgreSQL's signed int4.
    Two orgs may share one; they then only wait for each other."""
    key = zlib.crc32(org_id.encode())
    return key - 2**32 if key >= 2**31 else key


async def _insert_events(
    session: AsyncSession, dialect: str, rows: Sequence[EventRecord]
) -> list[int]:
    """Insert event rows (their ids left out); their new ids, in the rows' order."""
    if dialect == "sqlite":
        # The writer holds SQLite's one write lock, and the table's ids come from
        # AUTOINCREMENT: the rows of one statement take consecutive ids, the last one known.
        last = await execute_many(
            session, _INSERT_EVENTS, rows, columns=_WRITTEN_COLUMNS, last_rowid=True
        )
        assert last is not None
        return list(range(last - len(rows) + 1, last + 1))
    ids: list[int] = []
    for chunk in chunks(rows):  # a statement per chunk: the event loop turns between them
        result = await session.execute(
            _INSERT_RETURNING_IDS,
            [{column: row[column] for column in _WRITTEN_COLUMNS} for row in chunk],
        )
        ids.extend(result.scalars())
    return ids


async def log_events(
    session: AsyncSession, *, org_id: str, items: Sequence[tuple[str, NewEvent]]
) -> list[EventRecord]:
    """Store (container_id, event) pairs in one transaction, registering new containers.

    Returns the stored rows in input order, after the commit.
    """
    rows = await store_events(session, org_id=org_id, items=items)
    await session.commit()
    return rows


async def store_events(
    session: AsyncSession,
    *,
    org_id: str,
    items: Sequence[tuple[str, NewEvent]],
    key_ids: Sequence[str | None] | None = None,
) -> list[EventRecord]:
    """Write (container_id, event) pairs in the session's transaction, registering new
    containers, without committing; returns the rows in input order. `key_ids`, one per
    item, names the API key that wrote each (None: no key)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Readers and pollers take "after id N" of an org to mean nothing of the org at or
        # below N is still to come. A sequence hands out ids as transactions insert, not as
        # they commit, so two concurrent writers (processes, or writes outside group commit)
        # could commit id 101 before id 100, and a poller that saw 101 would never see 100.
        # Holding the org's lock from before its first write to the commit makes the ids of
        # the org's later transactions larger, and PostgreSQL releases it only once the commit
        # is visible, so each org's ids become visible in order. Every cursor and poll is for
        # one org, so orgs need not wait for each other. Taken before the container, zone and
        # count upserts below lock any row, so it cannot join a deadlock with them (the
        # writer's pruning before it locks only expired idempotency keys, which no holder of
        # the lock writes); a group of several orgs takes their locks in org order. SQLite has
        # one writer at a time already.
        await session.execute(_TAKE_EVENT_ORDER_LOCK, {"org_lock": event_order_lock(org_id)})
    latest: dict[str, datetime] = {}
    for container_id, new_event in items:
        seen = latest.get(container_id)
        latest[container_id] = (
            new_event.timestamp if seen is None else max(seen, new_event.timestamp)
        )
    received_at = utcnow()
    # In key order, as the zones and counts are: two transactions that share containers lock
    # them in the same order, so they cannot deadlock on them (PostgreSQL).
    await execute_many(
        session,
        _upsert_containers(dialect),
        [
            {"org_id": org_id, "id": container_id, "created_at": received_at, "last_event_at": at}
            for container_id, at in sorted(latest.items())
        ],
    )
    rows: list[EventRecord] = [
        {
            "id": 0,  # known once inserted
            "org_id": org_id,
            "container_id": container_id,
            # An enum member's _value_ is its plain text; .value goes through a descriptor.
            "event_type": new_event.event_type._value_,
            "status": new_event.status._value_,
            "timestamp": new_event.timestamp,  # in UTC: NewEvent converts it
            "received_at": received_at,
            "actor": new_event.actor,
            "details": new_event.details,
            "key_id": key_id,
        }
        for (container_id, new_event), key_id in zip(
            items, key_ids or repeat(None, len(items)), strict=True
        )
    ]
    # The records are what is written (times in UTC, as stored), not read back.
    ids = await _insert_events(session, dialect, rows)
    for row, event_id in zip(rows, ids, strict=True):
        row["id"] = event_id
    if dialect == "postgresql" and ids:
        # Every process learns of these events at the commit (storage.notifications); under
        # the lock above, no other transaction's ids of this org fall between the two.
        await notify_committed(session, Committed(org_id, min(ids), max(ids)))
    await windows.record_windows(session, org_id=org_id, stored=rows)
    from storage.counts import record_counts  # here: storage.counts imports this module

    await record_counts(session, org_id=org_id, stored=rows)
    return rows


async def is_committed(session: AsyncSession, row: EventRecord, *, lock_timeout: float) -> bool:
    """Whether a row that store_events returned was committed, though its transaction's commit
    failed (the connection dropped, say); asked in another session, once that one has ended.

    On PostgreSQL that transaction held the org's event-order lock until it ended, so taking
    the lock (waiting at most `lock_timeout` seconds) makes its outcome final and visible; a
    sequence never hands out an id twice. SQLite gives a rolled-back AUTOINCREMENT id out
    again, so the row is matched on its org, container and receipt time too: a later write
    that took the id is not mistaken for it.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            select(func.set_config("lock_timeout", f"{round(lock_timeout * 1000)}ms", True))
        )
        await session.execute(_TAKE_EVENT_ORDER_LOCK, {"org_lock": event_order_lock(row["org_id"])})
    found = await session.execute(
        select(events.c.id).where(
            events.c.id == row["id"],
            events.c.org_id == row["org_id"],
            events.c.container_id == row["container_id"],
            events.c.received_at == row["received_at"],
        )
    )
    return found.first() is not None


async def log_event(
    session: AsyncSession, *, org_id: str, container_id: str, new_event: NewEvent
) -> EventRecord:
    """Store one event for a container (registered on first use) and commit it."""
    [row] = await log_events(session, org_id=org_id, items=[(container_id, new_event)])
    return row
