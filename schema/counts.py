"""Counts for dashboards: EventConnection.totalCount and Organization.eventCounts buckets."""

from dataclasses import dataclass

import strawberry
from strawberry.types import Info

from schema.context import Context
from schema.errors import BadUserInput
from storage import domain
from storage.counts import MAX_BUCKETS, CountBy, InvalidCounts, count_events, event_counts
from storage.events import Window

strawberry.enum(
    CountBy,
    description=(
        f"How eventCounts groups events. HOUR and DAY cover at most {MAX_BUCKETS} buckets; "
        f"CONTAINER lists at most the {MAX_BUCKETS} busiest containers."
    ),
)


@strawberry.type(description="How many events fall in one group.")
class EventCountBucket:
    key: str = strawberry.field(
        description=(
            "The event type, status or container id; for HOUR and DAY the bucket's start "
            "as an RFC 3339 UTC time."
        )
    )
    count: int


@dataclass(frozen=True)
class EventQuery:
    """What a connection lists across all its pages, kept so totalCount can count it."""

    org_id: str
    event_filter: domain.EventFilter | None
    container_id: str | None
    window: Window


async def resolve_total_count(info: Info[Context, None], query: EventQuery) -> int:
    """Count the events of a connection's every page; runs only when totalCount is selected.

    On the read pool: one statement, compiled once per shape (storage.counts.count_events).
    """
    async with info.context.db.reader() as reader:
        return await count_events(
            reader,
            org_id=query.org_id,
            event_filter=query.event_filter,
            container_id=query.container_id,
            window=query.window,
        )


async def resolve_event_counts(
    info: Info[Context, None], *, query: EventQuery, by: CountBy
) -> list[EventCountBucket]:
    """The buckets of Organization.eventCounts; the window is already checked."""
    if query.container_id is not None and not domain.is_valid_id(query.container_id):
        raise BadUserInput("containerId is not a valid container id", field="containerId")
    async with info.context.db.reader() as reader:
        try:
            counts = await event_counts(
                reader,
                org_id=query.org_id,
                window=query.window,
                by=by,
                event_filter=query.event_filter,
                container_id=query.container_id,
            )
        except InvalidCounts as error:
            raise BadUserInput(f"{error.part} {error}", field=error.part) from None
    return [EventCountBucket(key=bucket.key, count=bucket.count) for bucket in counts.buckets]
