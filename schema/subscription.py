"""The root Subscription: an org's events, replayed from a cursor, then live."""

import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass

import strawberry
from strawberry.types import ExecutionResult, Info
from strawberry.types.execution import StreamExecutionResult

from schema.context import Context
from schema.enums import EventFilter
from schema.errors import BadUserInput, CodedError, ErrorCodes, NotFound
from schema.types import Event
from storage.broker import (
    Broker,
    SubscriberTooSlow,
    follow_events,
    newest_event_id,
)
from storage.cursors import InvalidCursor, decode_event_cursor, encode_event_cursor
from storage.domain import is_valid_id
from storage.events import EventRecord
from storage.keys import Scope

logger = logging.getLogger(__name__)


@dataclass
class LiveContext(Context):
    """The context, with the broker that wakes subscriptions when events are committed."""

    broker: Broker


class SubscriberTooSlowError(CodedError):
    code = "SUBSCRIBER_TOO_SLOW"


class StreamFault(CodedError):
    code = "INTERNAL_SERVER_ERROR"


class StreamErrorCodes(ErrorCodes):
    """ErrorCodes for every result a subscription sends: what its event stream raises ends
    it outside field execution, in a result of its own that on_operation never sees."""

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        if isinstance(result, ExecutionResult) and result.errors:
            result.errors = [self._coded(error) for error in result.errors]
        yield


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "The org's events in id order as they are committed. With `after` (an event "
            "cursor), every event after it is replayed first; without it, the stream starts "
            "now. Ends with SUBSCRIBER_TOO_SLOW, carrying the cursor to resume `after`, "
            "if the subscriber falls too far behind."
        )
    )
    async def container_events(
        self,
        info: Info[LiveContext, None],
        org_id: strawberry.ID,
        filter: EventFilter | None = None,
        container_id: strawberry.ID | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        context = info.context
        if org_id != context.org_id:
            raise NotFound(f"Organization {org_id!r} not found.")
        context.require(Scope.READ)
        if container_id is not None and not is_valid_id(container_id):
            raise BadUserInput("containerId is not a valid container id", field="containerId")
        try:
            after_id = None if after is None else decode_event_cursor(after)
        except InvalidCursor as error:
            raise BadUserInput(f"after {error}", field="after") from None
        events = _live_events(
            context,
            org_id=org_id,
            after_id=after_id,
            event_filter=filter,
            container_id=container_id,
        )
        try:
            async for row in events:
                # The connection's loader lives as long as it: a cached container would go
                # stale, and the cache would grow with every container ever sent.
                context.containers.clear_all()
                yield Event.from_row(row)
        except SubscriberTooSlow as error:
            raise SubscriberTooSlowError(
                f"The subscriber {error}; subscribe again with `after` to resume.",
                after=encode_event_cursor(error.last_id),
            ) from None
        except Exception:
            # Raised outside field execution, it would reach the client unmasked.
            logger.exception("subscription containerEvents failed")
            raise StreamFault("Unexpected error.") from None
        finally:
            await events.aclose()


async def _live_events(
    context: LiveContext,
    *,
    org_id: str,
    after_id: int | None,
    event_filter: EventFilter | None,
    container_id: str | None,
) -> AsyncGenerator[EventRecord, None]:
    """The org's events after `after_id` (or from now), then live."""
    # Registered before the first read: a commit landing between the two still wakes it.
    async with context.broker.follow(context.db, org_id, container_id) as subscriber:
        if after_id is None:
            after_id = await newest_event_id(context.db, org_id)
        events = follow_events(
            context.db,
            subscriber,
            after_id=after_id,
            event_filter=event_filter,
            container_id=container_id,
        )
        async with aclosing(events):
            async for row in events:
                yield row
