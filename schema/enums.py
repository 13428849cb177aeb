"""GraphQL enums: the storage vocabulary registered with Strawberry, so it is defined once."""

import strawberry

from storage.domain import EventFilter, EventStatus, EventType, Order

# strawberry.enum marks the classes in place; the names below are the storage enums themselves.
strawberry.enum(EventType, description="What happened to the container.")
strawberry.enum(EventStatus, description="Whether it succeeded.")
strawberry.enum(
    EventFilter,
    description="The legacy specification's five read filters; FAIL is any FAILURE event.",
)
strawberry.enum(Order, description="DESC: newest first. ASC: oldest first.")

__all__ = ["EventFilter", "EventStatus", "EventType", "Order"]
