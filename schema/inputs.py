"""Mutation inputs and payloads."""

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from schema.enums import EventStatus, EventType
from schema.types import Event
from storage import domain


@strawberry.input(description="A container event; the same fields as the REST POST body.")
class ContainerEventInput:
    event_type: EventType
    status: EventStatus = domain.EventStatus.SUCCESS
    timestamp: datetime | None = strawberry.field(
        default=None, description="When it happened, with a timezone; now when omitted."
    )
    actor: str | None = None
    details: JSON | None = None


@strawberry.input(description="A container event of a batch: the event and the container it is of.")
class NewContainerEventInput(ContainerEventInput):
    container_id: strawberry.ID


@strawberry.type
class LogContainerEventsPayload:
    message: str
    count: int
    ids: list[strawberry.ID] = strawberry.field(
        description="The new events' ids, in the order they were sent."
    )


@strawberry.type
class LogContainerEventPayload:
    message: str
    event: Event
