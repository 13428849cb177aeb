"""Counting events for dashboards: the total of any read, and buckets over a time window."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import ColumnElement, DateTime, Integer, String, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.domain import EventFilter
from storage.events import Window, filter_column
from storage.models import events

MAX_BUCKETS = 1000


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


def _matching(
    *,
    org_id: str,
    event_filter: EventFilter | None,
    container_id: str | None,
    window: Window,
) -> list[ColumnElement[bool]]:
    # The same selection as list_events, so a total always equals the length of the list.
    criteria = [events.c.org_id == org_id]
    if event_filter is not None:
        column, value = filter_column(event_filter)
        criteria.append(column == value)
    if container_id is not None:
        criteria.append(events.c.container_id == container_id)
    if window.since is not None:
        criteria.append(events.c.timestamp >= window.since)
    if window.until is not None:
        criteria.append(events.c.timestamp < window.until)
    return criteria


async def count_events(
    session: AsyncSession,
    *,
    org_id: str,
    event_filter: EventFilter | None,
    container_id: str | None,
    window: Window,
) -> int:
    """How many events list_events would return over all its pages for the same arguments."""
    criteria = _matching(
        org_id=org_id, event_filter=event_filter, container_id=container_id, window=window
    )
    query = select(func.count()).select_from(events).where(*criteria)
    return int((await session.execute(query)).scalar_one())


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


def _time_bucket(dialect: str, by: CountBy) -> ColumnElement[str] | ColumnElement[datetime]:
    # Literal SQL arguments, not bound parameters: GROUP BY must repeat the selected expression
    # exactly, and PostgreSQL treats two placeholders as two different expressions.
    if dialect == "postgresql":
        unit = literal_column("'hour'" if by is CountBy.HOUR else "'day'", String())
        utc = func.timezone(literal_column("'UTC'", String()), events.c.timestamp)
        return func.date_trunc(unit, utc, type_=DateTime())
    # SQLite stores UTC as 'YYYY-MM-DD HH:MM:SS.ffffff' text: the bucket is a prefix of it,
    # far cheaper per row than strftime().
    length = literal_column("13" if by is CountBy.HOUR else "10", Integer())
    return func.substr(events.c.timestamp, literal_column("1", Integer()), length, type_=String())


def _bucket_start(key: str | datetime) -> datetime:
    if isinstance(key, datetime):
        return key.replace(tzinfo=UTC)
    return datetime.strptime(key, "%Y-%m-%d %H" if len(key) == 13 else "%Y-%m-%d").replace(
        tzinfo=UTC
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def event_counts(
    session: AsyncSession,
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
    """
    starts = _bucket_starts(window, by) if by in BUCKET_SPANS else []
    group: ColumnElement[str] | ColumnElement[datetime]
    if by is CountBy.TYPE:
        group = events.c.event_type
    elif by is CountBy.STATUS:
        group = events.c.status
    elif by is CountBy.CONTAINER:
        group = events.c.container_id
    else:
        group = _time_bucket(session.get_bind().dialect.name, by)
    count = func.count()
    query = (
        select(group.label("key"), count.label("count"), func.sum(count).over().label("total"))
        .where(
            *_matching(
                org_id=org_id, event_filter=event_filter, container_id=container_id, window=window
            )
        )
        .group_by(group)
        .order_by(count.desc(), group)
        .limit(MAX_BUCKETS)
    )
    rows = (await session.execute(query)).all()
    total = int(rows[0].total) if rows else 0
    if by not in BUCKET_SPANS:
        return EventCounts([EventCount(str(key), int(size)) for key, size, _ in rows], total)
    found = {_bucket_start(key): int(size) for key, size, _ in rows}
    buckets = [EventCount(_rfc3339(start), found.get(start, 0)) for start in starts]
    return EventCounts(buckets, total)
