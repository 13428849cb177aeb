"""The root Mutation: logging container events, one or a batch."""

import re

import strawberry
from pydantic import ValidationError
from strawberry.types import Info

from schema.context import Context
from schema.errors import BadUserInput, NotFound
from schema.inputs import (
    ContainerEventInput,
    LogContainerEventPayload,
    LogContainerEventsPayload,
    NewContainerEventInput,
)
from schema.types import Event
from storage.domain import (
    ID_RULE,
    MAX_BATCH_EVENTS,
    InvalidBatch,
    NewEvent,
    is_valid_id,
    parse_batch,
    validation_errors,
)

_GRAPHQL_FIELD = {"event_type": "eventType", "container_id": "containerId"}
_ITEM_FIELD = re.compile(r"\[(\d+)\](?:\.(\w+))?")


def _new_event(event: ContainerEventInput) -> NewEvent:
    submitted = {
        name: value
        for name, value in vars(event).items()
        if value is not None or name == "event_type"
    }
    try:
        return NewEvent.model_validate(submitted)
    except ValidationError as error:
        problems = validation_errors(error)
        first = problems[0]
        field = "event." + _GRAPHQL_FIELD.get(first["field"], first["field"])
        raise BadUserInput(f"{field} {first['message']}", field=field) from None


def _graphql_batch_field(field: str) -> str:
    """A batch error's `[index].field` as the mutation's argument path: `events[3].eventType`."""
    match = _ITEM_FIELD.fullmatch(field)
    if match is None:
        return "events"
    index, name = match.groups()
    return f"events[{index}]" + ("" if name is None else "." + _GRAPHQL_FIELD.get(name, name))


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Log an event for a container, registering it on first use.")
    async def log_container_event(
        self,
        info: Info[Context, None],
        org_id: strawberry.ID,
        container_id: strawberry.ID,
        event: ContainerEventInput,
    ) -> LogContainerEventPayload:
        if org_id != info.context.org_id:
            raise NotFound(f"Organization {org_id!r} not found.")
        if not is_valid_id(container_id):
            raise BadUserInput(f"containerId {ID_RULE}", field="containerId")
        new_event = _new_event(event)
        [row] = await info.context.db.writer.log(org_id, [(container_id, new_event)])
        return LogContainerEventPayload(
            message="Event logged successfully", event=Event.from_row(row)
        )

    @strawberry.mutation(
        description=(
            f"Log up to {MAX_BATCH_EVENTS:,} events, each naming its container, in one "
            "transaction: all or nothing. Pass the events as a variable."
        )
    )
    async def log_container_events(
        self,
        info: Info[Context, None],
        org_id: strawberry.ID,
        events: list[NewContainerEventInput],
    ) -> LogContainerEventsPayload:
        if org_id != info.context.org_id:
            raise NotFound(f"Organization {org_id!r} not found.")
        submitted = [
            {name: value for name, value in vars(item).items() if value is not None}
            for item in events
        ]
        try:
            items = parse_batch(submitted)
        except InvalidBatch as error:
            errors = [
                {"field": _graphql_batch_field(item["field"]), "message": item["message"]}
                for item in error.errors
            ]
            message = "; ".join(f"{item['field']} {item['message']}" for item in errors)
            raise BadUserInput(message, field=errors[0]["field"], errors=errors) from None
        rows = await info.context.db.writer.log(org_id, items)
        return LogContainerEventsPayload(
            message="Events logged successfully",
            count=len(rows),
            ids=[strawberry.ID(str(row["id"])) for row in rows],
        )
