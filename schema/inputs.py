"""Mutation inputs and payloads."""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types.arguments import InputContext

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


def from_leaves(cls: type) -> Callable[[type, Mapping[str, Any], InputContext], Any]:
    """Build an input of scalars and enums straight from graphql-core's coerced value.

    Strawberry's own conversion resolves every field's type and GraphQL name again for each
    value: 70% of a 10,000-event logContainerEvents (cProfile), which held the event loop
    for 1,026 ms. graphql-core has already coerced the leaves (enums to their members,
    DateTime to datetimes), so building the instance is all that is left; the suite compares
    what this builds with Strawberry's conversion (tests/test_graphql_inputs.py).
    """
    names: dict[int, list[tuple[str, str]]] = {}  # by the name converter's id

    def build(type_: type, value: Mapping[str, Any], context: InputContext) -> Any:
        converter = context.config.name_converter
        pairs = names.get(id(converter))
        if pairs is None:
            fields = type_.__strawberry_definition__.fields  # type: ignore[attr-defined]
            pairs = names[id(converter)] = [
                (converter.from_field(field), field.python_name) for field in fields
            ]
        return type_(**{python: value[graphql] for graphql, python in pairs if graphql in value})

    return build


# Batches hold thousands of these; every field of both is a scalar or an enum.
for _input in (ContainerEventInput, NewContainerEventInput):
    _input.__strawberry_definition__.from_input = from_leaves(_input)  # type: ignore[union-attr]


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
