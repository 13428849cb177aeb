"""Reading and writing events: keyset pages over the read-path indexes, atomic writes."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Executable, Row, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.cursors import InvalidCursor, decode_event_cursor, encode_event_cursor
from storage.domain import EventFilter, EventStatus, NewEvent, Order
from storage.models import containers, events, utcnow

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


@dataclass(frozen=True)
class EventPage:
    rows: Sequence[Row]
    next_cursor: str | None
    cursors: list[str] = field(default_factory=list)


def _filter_clause(event_filter: EventFilter) -> ColumnElement[bool]:
    if event_filter is EventFilter.FAIL:
        return events.c.status == EventStatus.FAILURE.value
    return events.c.event_type == event_filter.value


async def list_events(
    session: AsyncSession,
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
    query = select(events).where(events.c.org_id == org_id)
    if event_filter is not None:
        query = query.where(_filter_clause(event_filter))
    if container_id is not None:
        query = query.where(events.c.container_id == container_id)
    if window.since is not None:
        query = query.where(events.c.timestamp >= window.since)
    if window.until is not None:
        query = query.where(events.c.timestamp < window.until)
    if page.order is Order.DESC:
        if page.after_id is not None:
            query = query.where(events.c.id < page.after_id)
        query = query.order_by(events.c.id.desc())
    else:
        if page.after_id is not None:
            query = query.where(events.c.id > page.after_id)
        query = query.order_by(events.c.id.asc())
    rows = (await session.execute(query.limit(page.limit + 1))).all()
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    cursors = [encode_event_cursor(row.id) for row in rows]
    return EventPage(rows=rows, next_cursor=cursors[-1] if has_more else None, cursors=cursors)


def _upsert_container(dialect: str, *, org_id: str, container_id: str, at: datetime) -> Executable:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    latest = func.greatest if dialect == "postgresql" else func.max
    statement = insert(containers).values(
        org_id=org_id, id=container_id, created_at=utcnow(), last_event_at=at
    )
    return statement.on_conflict_do_update(
        index_elements=[containers.c.org_id, containers.c.id],
        set_={
            "last_event_at": latest(containers.c.last_event_at, statement.excluded.last_event_at)
        },
    )


async def log_events(
    session: AsyncSession, *, org_id: str, items: Sequence[tuple[str, NewEvent]]
) -> Sequence[Row]:
    """Store (container_id, event) pairs in one transaction, registering new containers.

    Returns the stored rows in input order, after the commit.
    """
    dialect = session.get_bind().dialect.name
    latest: dict[str, datetime] = {}
    for container_id, new_event in items:
        seen = latest.get(container_id)
        latest[container_id] = (
            new_event.timestamp if seen is None else max(seen, new_event.timestamp)
        )
    for container_id, at in latest.items():
        await session.execute(
            _upsert_container(dialect, org_id=org_id, container_id=container_id, at=at)
        )
    received_at = utcnow()
    values = [
        {
            "org_id": org_id,
            "container_id": container_id,
            "event_type": new_event.event_type.value,
            "status": new_event.status.value,
            "timestamp": new_event.timestamp,
            "received_at": received_at,
            "actor": new_event.actor,
            "details": new_event.details,
        }
        for container_id, new_event in items
    ]
    result = await session.execute(
        events.insert().returning(*events.c, sort_by_parameter_order=True), values
    )
    rows = result.all()
    await session.commit()
    return rows


async def log_event(
    session: AsyncSession, *, org_id: str, container_id: str, new_event: NewEvent
) -> Row:
    """Store one event for a container (registered on first use) and commit it."""
    [row] = await log_events(session, org_id=org_id, items=[(container_id, new_event)])
    return row
