"""The object types: Organization, Container, Event and their Relay connections."""

from datetime import datetime
from typing import Annotated, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from schema.context import Context
from schema.counts import (
    CountBy,
    EventCountBucket,
    EventQuery,
    resolve_event_counts,
    resolve_total_count,
)
from schema.enums import EventFilter, EventStatus, EventType, Order
from schema.errors import BadUserInput, NotFound
from storage import domain
from storage.cursors import InvalidCursor, decode_container_cursor, encode_event_cursor
from storage.events import (
    MAX_PAGE_SIZE,
    EventPage,
    EventRecord,
    InvalidPage,
    Page,
    Window,
    list_events,
)
from storage.orgs import ContainerRecord, OrgRecord, get_container, list_containers

PAGE_ARGUMENT = {"limit": "first", "cursor": "after"}
# Members by stored value: a page builds 100 events, and a dict lookup costs a fraction of
# calling the enum class.
EVENT_TYPES = {member.value: member for member in domain.EventType}
EVENT_STATUSES = {member.value: member for member in domain.EventStatus}


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


def _page_info(cursors: list[str], next_cursor: str | None, after: str | None) -> PageInfo:
    return PageInfo(
        has_next_page=next_cursor is not None,
        has_previous_page=after is not None,
        start_cursor=cursors[0] if cursors else None,
        end_cursor=cursors[-1] if cursors else after,
    )


def _window(since: datetime | None, until: datetime | None) -> Window:
    times = {}
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            try:
                times[name] = domain.parse_timestamp(value)
            except ValueError as error:
                raise BadUserInput(f"{name} {error}", field=name) from None
    window = Window(**times)
    if window.since and window.until and window.since > window.until:
        raise BadUserInput("until must not be earlier than since", field="until")
    return window


def _page(first: int | None, after: str | None, order: domain.Order) -> Page:
    try:
        return Page.parse(limit=first, cursor=after, order=order)
    except InvalidPage as error:
        argument = PAGE_ARGUMENT[error.part]
        raise BadUserInput(f"{argument} {error}", field=argument) from None


@strawberry.type
class Event:
    id: strawberry.ID
    container_id: strawberry.ID
    event_type: EventType
    status: EventStatus
    timestamp: datetime
    received_at: datetime
    actor: str | None
    details: JSON | None
    key_id: strawberry.ID | None = strawberry.field(
        description="The API key that wrote this event (its id, never its secret); null for "
        "events written without one, such as by the command line."
    )
    org_id: strawberry.Private[str]
    # The row it was made from, for compiled plans of subscriptions (schema/compiled.py).
    row: strawberry.Private[EventRecord | None] = None

    @classmethod
    def from_row(cls, row: EventRecord) -> "Event":
        return cls(
            id=strawberry.ID(str(row["id"])),
            container_id=strawberry.ID(row["container_id"]),
            event_type=EVENT_TYPES[row["event_type"]],
            status=EVENT_STATUSES[row["status"]],
            timestamp=row["timestamp"],
            received_at=row["received_at"],
            actor=row["actor"],
            details=cast(JSON, row["details"]),
            key_id=None if row["key_id"] is None else strawberry.ID(row["key_id"]),
            org_id=row["org_id"],
            row=row,
        )

    @strawberry.field(
        description="This event's position, the same as its edge's: give it as `after` to "
        "page, or to subscribe, from here."
    )
    def cursor(self) -> str:
        return encode_event_cursor(int(self.id))

    @strawberry.field(description="Loaded in one batch for a whole page of events.")
    async def container(self, info: Info[Context, None]) -> "Container":
        row = await info.context.containers.load((self.org_id, self.container_id))
        # The events table's foreign key guarantees the container exists.
        assert row is not None, f"event {self.id} has no container row"
        return Container.from_row(row)


@strawberry.type
class EventEdge:
    cursor: str
    node: Event


@strawberry.type
class EventConnection:
    found: strawberry.Private[EventPage]
    after: strawberry.Private[str | None]
    query: strawberry.Private[EventQuery]

    @strawberry.field
    def edges(self) -> list[EventEdge]:
        return [
            EventEdge(cursor=encode_event_cursor(row["id"]), node=Event.from_row(row))
            for row in self.found.rows
        ]

    @strawberry.field
    def page_info(self) -> PageInfo:
        rows = self.found.rows
        cursors = [encode_event_cursor(row["id"]) for row in (rows[0], rows[-1])] if rows else []
        return _page_info(cursors, self.found.next_cursor, self.after)

    @strawberry.field(description="How many events match over all pages; counted only if asked.")
    async def total_count(self, info: Info[Context, None]) -> int:
        return await resolve_total_count(info, self.query)

    @strawberry.field(description="The events of this page, without their cursors.")
    def nodes(self) -> list[Event]:
        return [Event.from_row(row) for row in self.found.rows]


async def resolve_events(
    info: Info[Context, None],
    *,
    org_id: str,
    container_id: str | None,
    event_filter: domain.EventFilter | None,
    since: datetime | None,
    until: datetime | None,
    order: domain.Order,
    first: int | None,
    after: str | None,
) -> EventConnection:
    """One Relay page of events; shared by Organization.events and Container.events."""
    window = _window(since, until)
    page = _page(first, after, order)
    if container_id is not None and not domain.is_valid_id(container_id):
        raise BadUserInput("containerId is not a valid container id", field="containerId")
    async with info.context.db.reader() as reader:
        found = await list_events(
            reader,
            org_id=org_id,
            event_filter=event_filter,
            container_id=container_id,
            window=window,
            page=page,
        )
    return EventConnection(
        found=found, after=after, query=EventQuery(org_id, event_filter, container_id, window)
    )


FIRST_DESCRIPTION = f"Page size, 1 to {MAX_PAGE_SIZE}; 100 when omitted."


@strawberry.type
class Container:
    id: strawberry.ID
    created_at: datetime
    last_event_at: datetime | None
    org_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: ContainerRecord) -> "Container":
        return cls(
            id=strawberry.ID(row.id),
            created_at=row.created_at,
            last_event_at=row.last_event_at,
            org_id=row.org_id,
        )

    @strawberry.field(description="This container's events, newest first by default.")
    async def events(
        self,
        info: Info[Context, None],
        filter: EventFilter | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Order | None = domain.Order.DESC,
        first: Annotated[int | None, strawberry.argument(description=FIRST_DESCRIPTION)] = None,
        after: str | None = None,
    ) -> EventConnection:
        return await resolve_events(
            info,
            org_id=self.org_id,
            container_id=self.id,
            event_filter=filter,
            since=since,
            until=until,
            order=order or domain.Order.DESC,
            first=first,
            after=after,
        )


@strawberry.type
class ContainerEdge:
    cursor: str
    node: Container


@strawberry.type
class ContainerConnection:
    edges: list[ContainerEdge]
    page_info: PageInfo

    @strawberry.field(description="The containers of this page, without their cursors.")
    def nodes(self) -> list[Container]:
        return [edge.node for edge in self.edges]


@strawberry.type
class Organization:
    id: strawberry.ID
    name: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: OrgRecord) -> "Organization":
        return cls(id=strawberry.ID(row.id), name=row.name, created_at=row.created_at)

    @strawberry.field(description="The org's events, newest first by default.")
    async def events(
        self,
        info: Info[Context, None],
        filter: EventFilter | None = None,
        container_id: strawberry.ID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Order | None = domain.Order.DESC,
        first: Annotated[int | None, strawberry.argument(description=FIRST_DESCRIPTION)] = None,
        after: str | None = None,
    ) -> EventConnection:
        return await resolve_events(
            info,
            org_id=self.id,
            container_id=container_id,
            event_filter=filter,
            since=since,
            until=until,
            order=order or domain.Order.DESC,
            first=first,
            after=after,
        )

    @strawberry.field(description="The org's events in [since, until), counted per group.")
    async def event_counts(
        self,
        info: Info[Context, None],
        since: datetime,
        until: datetime,
        by: CountBy,
        filter: EventFilter | None = None,
        container_id: strawberry.ID | None = None,
    ) -> list[EventCountBucket]:
        query = EventQuery(self.id, filter, container_id, _window(since, until))
        return await resolve_event_counts(info, query=query, by=by)

    @strawberry.field(description="One container of this org.")
    async def container(self, info: Info[Context, None], id: strawberry.ID) -> Container | None:
        row = None
        if domain.is_valid_id(id):
            async with info.context.db.reader() as reader:
                row = await get_container(reader, org_id=self.id, container_id=id)
        if row is None:
            raise NotFound(f"Container {id!r} not found.")
        return Container.from_row(row)

    @strawberry.field(description="The org's containers in id order.")
    async def containers(
        self,
        info: Info[Context, None],
        first: Annotated[int | None, strawberry.argument(description=FIRST_DESCRIPTION)] = None,
        after: str | None = None,
    ) -> ContainerConnection:
        limit = 100 if first is None else first
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}", field="first")
        try:
            after_id = None if after is None else decode_container_cursor(after)
        except InvalidCursor as error:
            raise BadUserInput(f"after {error}", field="after") from None
        async with info.context.db.reader() as reader:
            found = await list_containers(reader, org_id=self.id, limit=limit, after_id=after_id)
        edges = [
            ContainerEdge(cursor=cursor, node=Container.from_row(row))
            for cursor, row in zip(found.cursors, found.rows, strict=True)
        ]
        return ContainerConnection(
            edges=edges, page_info=_page_info(found.cursors, found.next_cursor, after)
        )
