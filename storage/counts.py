"""Counting events for dashboards: the total of any read, and buckets over a time window.

Counts are not counted row by row: log_events adds every stored event to roll-up tables
(storage/models.py) in the transaction that stores it, so a sum over them always equals a
COUNT over `events`:

- without a window, an org's or a container's counts by type and status;
- over a window, whole hours from the counts per org-hour by type and status, per
  org-hour-container by type and status (for counts that name a container, and for containers
  grouped under a filter), and per org-hour-container for every type and status together (for
  containers grouped without a filter, with the containers' days when those cost less: a day
  holds a busy org's containers in fewer rows than its hours). An end of the window inside an
  hour is counted from `events` through ix_events_org_time: the part of that hour inside the
  window, or, when that holds fewer events, the hour's roll-up less the part outside it.

A count therefore reads at most about an hour of events plus one roll-up row per hour (or day)
and key, whatever the window and however large the table: no filter, container or grouping
falls back to counting the rows of the whole window.
"""

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    CTE,
    BindParameter,
    Column,
    ColumnElement,
    CompoundSelect,
    Executable,
    Integer,
    Select,
    Table,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.domain import EventFilter
from storage.driver import Reader, execute_many
from storage.events import EventRecord, Window, filter_column
from storage.models import (
    UTCDateTime,
    counts_by_container,
    counts_by_container_hour,
    counts_by_org,
    counts_by_org_hour,
    events,
    totals_by_container_day,
    totals_by_container_hour,
    utcnow,
)

MAX_BUCKETS = 1000
HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Every roll-up table, in the order writes visit them.
ROLL_UPS = (
    counts_by_org,
    counts_by_container,
    counts_by_org_hour,
    counts_by_container_hour,
    totals_by_container_hour,
    totals_by_container_day,
)
# Containers' days start every DAY_STEP hours and last DAY_HOURS. Reading one costs about as
# much as DAY_COST hours of them: a day lists a container once, each hour every container seen
# in it (about 7 hours' worth for the bench's Zipf-like traffic, at most 24).
DAY_HOURS = 24
DAY_STEP = 6
DAY_COST = 8


class CountBy(StrEnum):
    """What the events of a window are grouped by."""

    TYPE = "TYPE"
    STATUS = "STATUS"
    CONTAINER = "CONTAINER"
    HOUR = "HOUR"
    DAY = "DAY"


BUCKET_SPANS = {CountBy.HOUR: timedelta(hours=1), CountBy.DAY: timedelta(days=1)}


class InvalidCounts(ValueError):
    """A count request out of bounds; `part` names the offending input ("since" or "until")."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class EventCount:
    """One bucket: a type, status or container name, or a bucket's RFC 3339 UTC start time."""

    key: str
    count: int


@dataclass(frozen=True)
class EventCounts:
    buckets: list[EventCount]
    total: int  # every matching event, including containers beyond the first MAX_BUCKETS


def hour_of(moment: datetime) -> int:
    """The hour `moment` falls in, as whole hours since 1970-01-01T00:00Z: the roll-ups' key."""
    return (moment - EPOCH) // HOUR


def day_starts(hour: int) -> range:
    """The start hours of the containers' days that hold `hour`."""
    last = hour - hour % DAY_STEP
    return range(last - DAY_HOURS + DAY_STEP, last + 1, DAY_STEP)


def _hour_start(hour: int) -> datetime | None:
    """When an hour starts; None for the hour after the calendar's last."""
    try:
        return EPOCH + hour * HOUR
    except OverflowError:
        return None


# Writing: what log_events adds in its transaction.

# The finest roll-up: each of the others is it summed over the key columns that one lacks.
FINEST = counts_by_container_hour
# Its key: an org, hour, container, type and status.
FineKey = tuple[str, int, str, str, str]


def key_columns(table: Table) -> list[str]:
    """A roll-up table's key, in column order."""
    return [column.name for column in table.primary_key.columns]


def roll_up(fine: Mapping[FineKey, int]) -> dict[Table, Counter[tuple[Any, ...]]]:
    """Each roll-up table's increments for these finest counts, keyed in its columns' order."""
    finest = key_columns(FINEST)
    found = {}
    for table in ROLL_UPS[:-1]:
        key_of = itemgetter(*[finest.index(name) for name in key_columns(table)])
        increments: Counter[tuple[Any, ...]] = Counter()
        for key, count in fine.items():
            increments[key_of(key)] += count
        found[table] = increments
    days: Counter[tuple[Any, ...]] = Counter()
    for (org_id, hour, container_id), count in found[totals_by_container_hour].items():
        for start in day_starts(hour):
            days[org_id, start, container_id] += count
    found[totals_by_container_day] = days
    return found


@cache
def _increment(dialect: str, table: Table) -> Executable:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={"event_count": table.c.event_count + statement.excluded.event_count},
    )


async def record_counts(
    session: AsyncSession, *, org_id: str, stored: Iterable[EventRecord]
) -> None:
    """Add newly stored events to the roll-ups; runs in the transaction that stores them."""
    fine: Counter[FineKey] = Counter()
    # A batch's events mostly share an hour or two: the hour is worked out once per run of
    # events in it, not once per event.
    hour, hour_since, hour_until = 0, EPOCH, EPOCH
    for row in stored:
        timestamp = row["timestamp"]
        if not hour_since <= timestamp < hour_until:
            hour = hour_of(timestamp)
            hour_since = EPOCH + hour * HOUR
            # The calendar's last hour has no next one to end at.
            hour_until = _hour_start(hour + 1) or datetime.max.replace(tzinfo=UTC)
        fine[org_id, hour, row["container_id"], row["event_type"], row["status"]] += 1
    dialect = session.get_bind().dialect.name
    # Tables in one order, rows in key order: two transactions cannot deadlock on them.
    for table, increments in roll_up(fine).items():
        names = key_columns(table)
        rows = [
            {**dict(zip(names, key, strict=True)), "event_count": count}
            for key, count in sorted(increments.items())
        ]
        if rows:
            await execute_many(session, _increment(dialect, table), rows)


# Reading. A count's statement is planned in Python (_plan: its shape and its parameters'
# values) and built from the shape alone, so the read pool compiles each shape once.


@dataclass(frozen=True)
class _Edge:
    """The events stamped in [since, until) inside one hour, added (sign 1) or taken off (-1)."""

    hour: int
    since: datetime
    until: datetime | None  # None: to the end of the calendar
    sign: int


@dataclass(frozen=True)
class _Split:
    """A window as whole hours [first_hour, end_hour) of roll-ups (None: open) and its edges."""

    first_hour: int | None
    end_hour: int | None
    edges: tuple[_Edge, ...]


def _split(since: datetime | None, until: datetime | None, now: datetime) -> _Split:
    """Whole hours, plus at each end inside an hour whichever part of that hour holds fewer
    events: the part inside the window, or the part outside it taken off the hour's roll-up.
    Fewer is judged by time up to `now`, the later part of the current hour being empty but
    for events stamped ahead. Both ends in one hour: the events between them."""

    def cost(since: datetime, until: datetime | None) -> timedelta:
        return max(timedelta(0), (now if until is None else min(until, now)) - since)

    first_hour = end_hour = None
    edges = []
    if since is not None:
        hour = hour_of(since)
        start, end = _hour_start(hour), _hour_start(hour + 1)
        assert start is not None
        if since == start:
            first_hour = hour
        elif until is not None and (end is None or until <= end):
            return _Split(hour, hour, (_Edge(hour, since, until, 1),))
        elif cost(since, end) <= cost(start, since):
            first_hour = hour + 1
            edges.append(_Edge(hour, since, end, 1))
        else:
            first_hour = hour
            edges.append(_Edge(hour, start, since, -1))
    if until is not None:
        hour = hour_of(until)
        start, end = _hour_start(hour), _hour_start(hour + 1)
        assert start is not None
        if until == start:
            end_hour = hour
        elif cost(until, end) < cost(start, until):
            end_hour = hour + 1
            edges.append(_Edge(hour, until, end, -1))
        else:
            end_hour = hour
            edges.append(_Edge(hour, start, until, 1))
    return _Split(first_hour, end_hour, tuple(edges))


@dataclass(frozen=True)
class _Selection:
    """What a count selects: an org's events, maybe one filter, one container, a window."""

    org_id: str
    event_filter: EventFilter | None
    container_id: str | None
    window: Window

    @property
    def windowed(self) -> bool:
        return self.window.since is not None or self.window.until is not None

    @property
    def empty(self) -> bool:
        since, until = self.window.since, self.window.until
        return since is not None and until is not None and until <= since

    def roll_ups(self, by: CountBy | None) -> Table:
        """The smallest roll-up table holding this selection's counts grouped by `by`."""
        if self.container_id is not None:
            return counts_by_container_hour if self.windowed else counts_by_container
        if by is CountBy.CONTAINER:
            if not self.windowed:
                return counts_by_container
            return (
                totals_by_container_hour if self.event_filter is None else counts_by_container_hour
            )
        return counts_by_org_hour if self.windowed else counts_by_org


def _unindexed(dialect: str) -> Callable[[Column[Any]], ColumnElement[Any]]:
    """Hide a column from SQLite's index choice (a unary +), so an edge of a window is read
    through ix_events_org_time, never by walking every event of a type or a container."""
    if dialect != "sqlite":
        return lambda column: column
    return lambda column: type_coerce(
        literal_column(f"+{column.table.name}.{column.name}"), column.type
    )


@dataclass(frozen=True)
class _Grouping:
    """How a count keys its rows: by a column every table has (event_type, status,
    container_id), by time bucket ((hour - first_hour) // span_hours, an index into the
    buckets, with first_hour a parameter), or not at all (a total)."""

    column: str | None = None
    span_hours: int = 0

    def rolled(self, table: Table, first_hour: BindParameter[int]) -> list[ColumnElement[Any]]:
        if self.column is not None:
            return [table.c[self.column].label("key")]
        if self.span_hours:
            return [((table.c.hour - first_hour) // self.span_hours).label("key")]
        return []

    def edge(self, bucket: BindParameter[Any], count: ColumnElement[int]) -> Select[Any]:
        """An edge's events; `bucket` is the index of the bucket its hour falls in."""
        if self.column is not None:
            column = events.c[self.column]
            return select(column.label("key"), count.label("n")).group_by(column)
        if self.span_hours:
            return select(bucket.label("key"), count.label("n"))
        return select(count.label("n"))


def _days(first_hour: int | None, end_hour: int | None) -> tuple[int, int] | None:
    """The containers' days, as (first start, how many), that cost less than the hours
    [first_hour, end_hour) once the hours around them are added or taken off; or None."""
    if first_hour is None or end_hour is None:
        return None
    cheapest, days = end_hour - first_hour, None
    earlier = first_hour - first_hour % DAY_STEP
    for start in (earlier, earlier + DAY_STEP):
        around = round((end_hour - start) / DAY_HOURS)
        for count in (around - 1, around, around + 1):
            end = start + count * DAY_HOURS
            cost = count * DAY_COST + abs(start - first_hour) + abs(end - end_hour)
            if count > 0 and cost < cheapest:
                cheapest, days = cost, (start, count)
    return days


def _stored_day_starts(
    org_id: BindParameter[str], first: BindParameter[int], last: BindParameter[int]
) -> CTE:
    """The starts from `first` to `last`, every DAY_HOURS, of the org's stored days (and of
    some empty ones), each found by one index seek past the one before: as many as the days
    stored, however wide the window, in a statement of constant size. Listing every start
    took a parameter per day: 3.65 million over years 1 to 9999.
    """
    day = totals_by_container_day

    def next_start(after: ColumnElement[int]) -> ColumnElement[int]:
        """The first start on the days' step at or past the next stored start after `after`;
        NULL past the last one."""
        stored = (
            select(day.c.start_hour)
            .where(day.c.org_id == org_id, day.c.start_hour > after, day.c.start_hour <= last)
            .order_by(day.c.start_hour)
            .limit(1)
            .scalar_subquery()
        )
        return first + (stored - first + (DAY_HOURS - 1)) // DAY_HOURS * DAY_HOURS

    starts = select(next_start(first - 1).label("start_hour")).cte("day_starts", recursive=True)
    return starts.union_all(
        select(next_start(starts.c.start_hour)).where(starts.c.start_hour.is_not(None))
    )


def _one_of(column: Column[int], starts: CTE, dialect: str) -> ColumnElement[bool]:
    """`column` is one of the starts. Given them as a set, PostgreSQL hash-joins them with
    every stored day of the org; as one array, it seeks each in the index (EXPLAIN ANALYZE,
    10M events, 12 days by container: 197 ms -> 41 ms). SQLite seeks each either way."""
    if dialect != "postgresql":
        return column.in_(select(starts.c.start_hour))
    found = select(postgresql.array_agg(starts.c.start_hour)).scalar_subquery()
    return column == any_(cast(found, postgresql.ARRAY(Integer())))


@dataclass(frozen=True)
class _Part:
    """One SELECT among a count's rows, `table`'s rows added (sign 1) or taken off (-1): of a
    roll-up, those of the hours [lower, upper); of the containers' days, those starting from
    lower to upper, both included; of `events` (an edge), those stamped in [lower, upper).
    Which ends it has is its shape; their values are the parameters lower_<i> and upper_<i>,
    i its place in the statement."""

    table: Table
    sign: int
    lower: bool
    upper: bool


@dataclass(frozen=True)
class _Shape:
    """What a count statement's SQL depends on, its values left to parameters: a filter's
    column, whether it names a container, its grouping and its parts. A shape is compiled once
    per dialect (storage.driver.Reader); `prefix` begins its parameters' names, so that two
    shapes can share a statement."""

    filter_column: str | None
    container: bool
    grouping: _Grouping
    parts: tuple[_Part, ...]
    prefix: str = ""

    def param(self, name: str, type_: Any = None) -> BindParameter[Any]:
        return bindparam(self.prefix + name, type_=type_)

    def criteria(
        self, table: Table, hidden: Callable[[Column[Any]], ColumnElement[Any]]
    ) -> list[ColumnElement[bool]]:
        criteria = [table.c.org_id == self.param("org_id")]
        if self.filter_column is not None:
            criteria.append(hidden(table.c[self.filter_column]) == self.param("filter_value"))
        if self.container:
            criteria.append(hidden(table.c.container_id) == self.param("container_id"))
        return criteria


def _as_is(column: Column[Any]) -> ColumnElement[Any]:
    return column


def _plan(
    selection: _Selection,
    grouping: _Grouping,
    by: CountBy | None,
    *,
    first_hour: int = 0,
    prefix: str = "",
) -> tuple[_Shape, dict[str, Any]]:
    """The shape of the statement that counts the selection from `by`'s roll-ups and its
    parameters' values: roll-up rows for the window's whole hours (the hours themselves or,
    when containers are grouped without a filter and it costs less, containers' days and the
    hours around them), plus each edge's events. Time buckets start at `first_hour`."""
    table = selection.roll_ups(by)
    column, value = (None, None)
    if selection.event_filter is not None:
        column, value = filter_column(selection.event_filter)
    values: dict[str, Any] = {
        "org_id": selection.org_id,
        "filter_value": value,
        "container_id": selection.container_id,
        "first_hour": first_hour,
    }
    parts: list[_Part] = []

    def add(table: Table, sign: int, lower: Any, upper: Any, edge_hour: int | None = None) -> None:
        index = len(parts)
        parts.append(_Part(table, sign, lower is not None, upper is not None))
        values[f"lower_{index}"], values[f"upper_{index}"] = lower, upper
        if edge_hour is not None and grouping.span_hours:
            values[f"bucket_{index}"] = (edge_hour - first_hour) // grouping.span_hours

    if not selection.windowed:
        add(table, 1, None, None)
    else:
        split = _split(selection.window.since, selection.window.until, utcnow())
        first, end = split.first_hour, split.end_hour
        days = _days(first, end) if table is totals_by_container_hour else None
        if first is None or end is None or first < end:  # else no whole hour: only edges
            if days is None or first is None or end is None:
                add(table, 1, first, end)
            else:
                start, count = days
                add(totals_by_container_day, 1, start, start + (count - 1) * DAY_HOURS)
                # The hours between the window's ends and the days' ends: added inside, taken
                # off outside.
                covered = start + count * DAY_HOURS
                around = [
                    (first, start, 1),
                    (start, first, -1),
                    (covered, end, 1),
                    (end, covered, -1),
                ]
                for since, until, sign in around:
                    if since < until:
                        add(table, sign, since, until)
        for edge in split.edges:
            add(events, edge.sign, edge.since, edge.until, edge.hour)
    shape = _Shape(
        filter_column=None if column is None else column.key,
        container=selection.container_id is not None,
        grouping=grouping,
        parts=tuple(parts),
        prefix=prefix,
    )
    return shape, {prefix + name: value for name, value in values.items()}


def _counted(shape: _Shape, dialect: str) -> Select[Any] | CompoundSelect:
    """One statement whose rows, (key, n) or (n), add up to the selection's counts: roll-up
    rows, plus each edge's events (negative for a part taken off the hour's roll-up)."""
    grouping, param = shape.grouping, shape.param
    first_hour = param("first_hour", Integer())
    hidden = _unindexed(dialect)
    selects: list[Select[Any]] = []
    for index, part in enumerate(shape.parts):
        table, lower, upper = part.table, f"lower_{index}", f"upper_{index}"
        if table is events:
            count = func.count() if part.sign > 0 else -func.count()
            edge = grouping.edge(param(f"bucket_{index}", Integer()), count).where(
                *shape.criteria(events, hidden),
                events.c.timestamp >= param(lower, UTCDateTime()),
            )
            if part.upper:
                edge = edge.where(events.c.timestamp < param(upper, UTCDateTime()))
            selects.append(edge)
            continue
        rolled = table.c.event_count if part.sign > 0 else -table.c.event_count
        query: Select[Any] = select(*grouping.rolled(table, first_hour), rolled.label("n"))
        query = query.where(*shape.criteria(table, _as_is))
        if table is totals_by_container_day:
            starts = _stored_day_starts(
                param("org_id"), param(lower, Integer()), param(upper, Integer())
            )
            query = query.where(_one_of(table.c.start_hour, starts, dialect))
        else:
            if part.lower:
                query = query.where(table.c.hour >= param(lower, Integer()))
            if part.upper:
                query = query.where(table.c.hour < param(upper, Integer()))
        selects.append(query)
    return selects[0] if len(selects) == 1 else union_all(*selects)


def _total(shape: _Shape, dialect: str) -> Select[Any]:
    counted = _counted(shape, dialect).subquery()
    return select(func.coalesce(func.sum(counted.c.n), 0))


async def count_events(
    source: Reader | AsyncSession,
    *,
    org_id: str,
    event_filter: EventFilter | None,
    container_id: str | None,
    window: Window,
) -> int:
    """How many events list_events would return over all its pages for the same arguments.

    One SELECT, which reads the roll-ups and the events of the window's edges as of one
    snapshot: no transaction is needed. On a read-pool Reader (the request path) its shape is
    compiled once per dialect; through a session it is built each time.
    """
    selection = _Selection(org_id, event_filter, container_id, window)
    if selection.empty:
        return 0
    shape, values = _plan(selection, _Grouping(), None)
    if isinstance(source, Reader):
        dialect = source.dialect.name
        rows = await source.fetch(("count_events", shape), lambda: _total(shape, dialect), values)
        [(total,)] = rows
    else:
        query = _total(shape, source.get_bind().dialect.name)
        total = (await source.execute(query, values)).scalar_one()
    return int(total)


def _grouped(shape: _Shape, whole: _Shape | None, dialect: str) -> Select[Any]:
    """event_counts' statement: (key, count) rows, and each row's `whole` total if given."""
    counted = _counted(shape, dialect).subquery()
    count = func.sum(counted.c.n)
    query = (
        select(counted.c.key, count.label("count"))
        .group_by(counted.c.key)
        .having(count > 0)
        .order_by(count.desc(), counted.c.key)
        .limit(MAX_BUCKETS)
    )
    if whole is not None:
        query = query.add_columns(_total(whole, dialect).scalar_subquery().label("total"))
    return query


def _bucket_starts(window: Window, by: CountBy) -> list[datetime]:
    """The start of every HOUR or DAY bucket the window touches, or InvalidCounts."""
    if window.since is None or window.until is None:
        raise InvalidCounts("since" if window.since is None else "until", "is required")
    span = BUCKET_SPANS[by]
    first = window.since.replace(minute=0, second=0, microsecond=0)
    if by is CountBy.DAY:
        first = first.replace(hour=0)
    if window.until - first > span * MAX_BUCKETS:
        unit = "hours" if by is CountBy.HOUR else "days"
        raise InvalidCounts(
            "until", f"must be at most {MAX_BUCKETS} {unit} after since when counting by {by}"
        )
    if window.until <= window.since:
        return []
    # Multiples of the span, never a step past `until`: near year 9999 that step would overflow.
    return [first + span * index for index in range(-(-(window.until - first) // span))]


def _rfc3339(moment: datetime) -> str:
    # isoformat, not strftime: %Y leaves years before 1000 short of four digits on Linux.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


async def event_counts(
    source: Reader | AsyncSession,
    *,
    org_id: str,
    window: Window,
    by: CountBy,
    event_filter: EventFilter | None = None,
    container_id: str | None = None,
) -> EventCounts:
    """The window's matching events grouped by `by`.

    HOUR and DAY list every bucket the window touches, oldest first, empty ones as 0, and need
    both ends of the window. TYPE, STATUS and CONTAINER list the keys that occur, largest count
    first then by key; CONTAINER at most MAX_BUCKETS of them.

    One SELECT, as count_events: on a read-pool Reader (the request path) its shape is
    compiled once per dialect (1.6 ms a GraphQL EventCounts request through a session, 0.9
    on the read pool); through a session it is built each time.
    """
    starts = _bucket_starts(window, by) if by in BUCKET_SPANS else []
    selection = _Selection(org_id, event_filter, container_id, window)
    if selection.empty:
        return EventCounts([], 0)
    first_hour = 0
    if by in BUCKET_SPANS:
        # A bucket is keyed by its index in `starts`.
        grouping = _Grouping(span_hours=BUCKET_SPANS[by] // HOUR)
        first_hour = hour_of(starts[0])
    else:
        column = {CountBy.TYPE: "event_type", CountBy.STATUS: "status"}.get(by, "container_id")
        grouping = _Grouping(column=column)
    shape, values = _plan(selection, grouping, by, first_hour=first_hour)
    whole = None
    if by is CountBy.CONTAINER:
        # More containers than listed may match: their total comes from the ungrouped
        # roll-ups, in the same statement so that it agrees with the buckets.
        whole, whole_values = _plan(selection, _Grouping(), None, prefix="total_")
        values.update(whole_values)
    rows: Sequence[Sequence[Any]]
    if isinstance(source, Reader):
        dialect = source.dialect.name
        rows = await source.fetch(
            ("event_counts", shape, whole), lambda: _grouped(shape, whole, dialect), values
        )
    else:
        query = _grouped(shape, whole, source.get_bind().dialect.name)
        rows = (await source.execute(query, values)).all()
    if by is CountBy.CONTAINER:
        total = int(rows[0][2]) if rows else 0
    else:
        total = sum(int(size) for _key, size in rows)
    if by not in BUCKET_SPANS:
        return EventCounts([EventCount(str(key), int(size)) for key, size, *_ in rows], total)
    found = {int(index): int(size) for index, size in rows}
    buckets = [
        EventCount(_rfc3339(start), found.get(index, 0)) for index, start in enumerate(starts)
    ]
    return EventCounts(buckets, total)
