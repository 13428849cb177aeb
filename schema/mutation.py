"""The root Mutation: logging container events, one or a batch."""

import re
from typing import Annotated

import strawberry
from pydantic import ValidationError
from strawberry.types import Info

from schema.context import Context
from schema.errors import (
    BadUserInput,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    NotFound,
    WriteOutcomeUnknownError,
)
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
from storage.events import EventRecord
from storage.idempotency import (
    KEY_RULE,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    idempotency,
)
from storage.keys import Scope
from storage.writer import WriteOutcomeUnknown

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


IdempotencyKeyArgument = Annotated[
    str | None,
    strawberry.argument(
        description=(
            "Makes a retry safe: a retry with the same key (scoped to the org, kept at least "
            "24 hours) and the same events returns the first answer and stores nothing; the "
            "same key with other events fails with IDEMPOTENCY_KEY_REUSED, and a retry while "
            "the first is still being written fails with IDEMPOTENCY_KEY_IN_FLIGHT. "
            f"The key {KEY_RULE}."
        )
    ),
]


async def _log(
    info: Info[Context, None],
    org_id: str,
    kind: str,
    items: list[tuple[str, NewEvent]],
    key: str | None,
) -> list[EventRecord]:
    """Store validated events, once per idempotency key."""
    try:
        once = idempotency(key, kind, items)
    except InvalidIdempotencyKey as error:
        raise BadUserInput(f"idempotencyKey {error}", field="idempotencyKey") from None
    try:
        logged = await info.context.db.writer.log(org_id, items, once, key_id=info.context.key_id)
    except IdempotencyKeyReused:
        raise IdempotencyKeyReusedError(
            "This idempotencyKey was already used for different events; "
            "send a new key for a new request.",
            field="idempotencyKey",
        ) from None
    except IdempotencyKeyInFlight:
        raise IdempotencyKeyInFlightError(
            "A request with this idempotencyKey is still being processed; "
            "retry once it is answered.",
            field="idempotencyKey",
        ) from None
    except WriteOutcomeUnknown:
        raise WriteOutcomeUnknownError(
            "The events may have been stored: the database did not confirm the commit and "
            "could not be asked whether it landed. Retry with an idempotencyKey (the same "
            "one, if this request had one): a retry with the same key stores them once."
        ) from None
    return logged.rows


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
        idempotency_key: IdempotencyKeyArgument = None,
    ) -> LogContainerEventPayload:
        if org_id != info.context.org_id:
            raise NotFound(f"Organization {org_id!r} not found.")
        info.context.require(Scope.WRITE)
        if not is_valid_id(container_id):
            raise BadUserInput(f"containerId {ID_RULE}", field="containerId")
        new_event = _new_event(event)
        [row] = await _log(info, org_id, "event", [(container_id, new_event)], idempotency_key)
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
        idempotency_key: IdempotencyKeyArgument = None,
    ) -> LogContainerEventsPayload:
        if org_id != info.context.org_id:
            raise NotFound(f"Organization {org_id!r} not found.")
        info.context.require(Scope.WRITE)
        submitted = [
            {name: value for name, value in vars(item).items() if value is not None}
            for item in events
        ]
        try:
            items = await parse_batch(submitted)
        except InvalidBatch as error:
            errors = [
                {"field": _graphql_batch_field(item["field"]), "message": item["message"]}
                for item in error.errors
            ]
            message = "; ".join(f"{item['field']} {item['message']}" for item in errors)
            raise BadUserInput(message, field=errors[0]["field"], errors=errors) from None
        rows = await _log(info, org_id, "batch", items, idempotency_key)
        return LogContainerEventsPayload(
            message="Events logged successfully",
            count=len(rows),
            ids=[strawberry.ID(str(row["id"])) for row in rows],
        )
