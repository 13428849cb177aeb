"""The root Mutation: logging container events."""

import strawberry
from pydantic import ValidationError
from strawberry.types import Info

from schema.context import Context
from schema.errors import BadUserInput, NotFound
from schema.inputs import ContainerEventInput, LogContainerEventPayload
from schema.types import Event
from storage.domain import ID_RULE, NewEvent, is_valid_id, validation_errors
from storage.events import log_event

_GRAPHQL_FIELD = {"event_type": "eventType"}


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
        async with info.context.db.session() as session:
            row = await log_event(
                session, org_id=org_id, container_id=container_id, new_event=new_event
            )
        return LogContainerEventPayload(
            message="Event logged successfully", event=Event.from_row(row)
        )
