"""GraphQL enums: the storage vocabulary exposed as is, so it is defined once."""

import strawberry

from storage import domain

EventType = strawberry.enum(domain.EventType, description="What happened to the container.")
EventStatus = strawberry.enum(domain.EventStatus, description="Whether it succeeded.")
EventFilter = strawberry.enum(
    domain.EventFilter,
    description="The legacy specification's five read filters; FAIL is any FAILURE event.",
)
Order = strawberry.enum(domain.Order, description="DESC: newest first. ASC: oldest first.")
