"""The REST shim: the legacy specification's eight routes at their exact paths, and batch ingest."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

import orjson
from pydantic import ValidationError
from starlette.datastructures import QueryParams
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import CHALLENGE, Authenticator, Unauthenticated
from gateway.problems import Problem, invalid, invalid_fields
from gateway.responses import JSONResponse
from gateway.urls import own_url, request_base
from storage.database import Database
from storage.domain import (
    BATCH_SLICE,
    ID_RULE,
    EventFilter,
    InvalidBatch,
    NewEvent,
    Order,
    enum_name,
    is_valid_id,
    load_json,
    load_json_array,
    parse_batch,
    parse_timestamp,
    validation_errors,
)
from storage.events import EventRecord, InvalidPage, Page, Window, list_events
from storage.idempotency import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    idempotency,
)
from storage.keys import KeyHolder, Scope, scopes_text
from storage.orgs import get_container
from storage.writer import WriteOutcomeUnknown

LIST_PARAMETERS = ("limit", "cursor", "since", "until", "order")
IDEMPOTENCY_HEADER = "Idempotency-Key"
# On the answer to a retry: it repeats the first answer; nothing new was stored.
REPLAYED_HEADER = "Idempotent-Replayed"
Choice = TypeVar("Choice", bound=StrEnum)
FILTER_PATHS = {f"by_{event_filter.value.lower()}": event_filter for event_filter in EventFilter}


async def authorized_org(request: Request, needed: Scope) -> tuple[Database, KeyHolder]:
    """Authenticate, resolve the path's org (404 unless it is the key's own org), then check
    the key may do what the route does (403)."""
    db: Database = request.app.state.db
    authenticator: Authenticator = request.app.state.authenticator
    try:
        holder = await authenticator.holder_for(request.headers)
    except Unauthenticated as error:
        raise Problem(401, str(error), headers=CHALLENGE) from None
    org_id = checked_id("org_id", request.path_params["org_id"])
    if org_id != holder.org_id:
        raise Problem(404, f"Organization {org_id!r} not found.")
    if not holder.may(needed):
        raise Problem(403, forbidden_message(holder, needed))
    return db, holder


def forbidden_message(holder: KeyHolder, needed: Scope) -> str:
    action = "read events" if needed is Scope.READ else "write events"
    return (
        f"This API key cannot {action}: its scope is {scopes_text(holder.scopes)}. "
        f"Use a key with the {needed.value} scope."
    )


def checked_id(field: str, value: str) -> str:
    if not is_valid_id(value):
        raise invalid(field, ID_RULE)
    return value


def _parse_limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7):
        raise invalid("limit", "must be an integer between 1 and 1000")
    return int(raw)


def parse_choice(name: str, raw: str, choices: type[Choice]) -> Choice:
    """An enum-valued query parameter, matched without case, or a 400 naming it."""
    try:
        return choices(str(enum_name(raw)))
    except ValueError:
        names = ", ".join(member.value.lower() for member in choices)
        raise invalid(name, f"must be one of {names}; case does not matter") from None


def single_values(query: QueryParams, allowed: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in query.multi_items():
        if name not in allowed:
            raise invalid(name, f"is not a known query parameter; use {', '.join(allowed)}")
        if name in values:
            raise invalid(name, "must be given at most once")
        values[name] = value
    return values


def parse_window(values: dict[str, str]) -> Window:
    """The `since` (inclusive) and `until` (exclusive) query parameters, either one optional."""
    times = {}
    for name in ("since", "until"):
        if name in values:
            try:
                times[name] = parse_timestamp(values[name])
            except ValueError as error:
                message = str(error)
                if " " in values[name]:
                    # An unencoded "+01:00" offset reaches the server as " 01:00".
                    message += "; in a URL, write the offset's '+' as %2B"
                raise invalid(name, message) from None
    window = Window(**times)
    if window.since and window.until and window.since > window.until:
        raise invalid("until", "must not be earlier than since")
    return window


def _parse_listing(
    query: QueryParams, allowed: tuple[str, ...]
) -> tuple[dict[str, str], Window, Page]:
    values = single_values(query, allowed)
    window = parse_window(values)
    order = parse_choice("order", values.get("order", "desc"), Order)
    try:
        page = Page.parse(
            limit=_parse_limit(values.get("limit")), cursor=values.get("cursor"), order=order
        )
    except InvalidPage as error:
        raise invalid(error.part, str(error)) from None
    return values, window, page


async def _event_list(
    request: Request,
    *,
    allowed: tuple[str, ...],
    event_filter: EventFilter | None = None,
    path_container_id: str | None = None,
) -> JSONResponse:
    """One page of events; a container named in the path must exist, one in the query need not."""
    db, holder = await authorized_org(request, Scope.READ)
    org_id = holder.org_id
    values, window, page = _parse_listing(request.query_params, allowed)
    container_id = values.get("container_id") if path_container_id is None else path_container_id
    if container_id is not None:
        checked_id("container_id", container_id)
    async with db.reader() as reader:
        found = await list_events(
            reader,
            org_id=org_id,
            event_filter=event_filter,
            container_id=container_id,
            window=window,
            page=page,
        )
        # A page with events proves the container exists; only an empty one needs a look.
        if (
            path_container_id is not None
            and not found.rows
            and not await get_container(reader, org_id=org_id, container_id=path_container_id)
        ):
            raise Problem(404, f"Container {path_container_id!r} not found.")
    headers = {}
    if found.next_cursor is not None:
        # The request's own parameters, already parsed, with the next cursor.
        query = urlencode({**values, "cursor": found.next_cursor})
        next_url = own_url(request_base(request), request.url.path, query)
        headers["Link"] = f'<{next_url}>; rel="next"'
    # Records are the specification's event objects already (storage.events.EventRecord).
    body = {"events": found.rows, "next_cursor": found.next_cursor}
    return JSONResponse(body, headers=headers)


NDJSON = "application/x-ndjson"


def _ndjson_lines(raw: bytes) -> Iterator[bytes]:
    """The non-blank lines of an NDJSON body, as bytes.splitlines cuts them (at \n, \r and
    \r\n), but cut as they are asked for: splitlines copies every line of a 29 MiB body in
    one call of 30-65 ms, during which no other request is served."""
    start, end = 0, len(raw)
    while start < end:
        stop = raw.find(b"\n", start)
        stop = end if stop < 0 else stop
        piece = raw[start:stop]
        start = stop + 1
        if b"\r" in piece:  # rare: a line ends with \r\n, or a lone \r ends one too
            yield from (line for line in piece.splitlines() if line.strip())
        elif piece.strip():
            yield piece


async def _batch_items(raw: bytes, content_type: str) -> list[Any]:
    """The items of a batch body: a JSON array, or one JSON object per line (NDJSON). A large
    body is read a slice at a time, so that other requests are served meanwhile."""
    if content_type.partition(";")[0].strip().lower() != NDJSON:
        try:
            return cast(list[Any], await load_json_array(raw))
        except orjson.JSONDecodeError:
            raise invalid("body", "must be valid JSON") from None
    items, errors = [], []
    for number, line in enumerate(_ndjson_lines(raw)):
        if number and not number % BATCH_SLICE:
            await asyncio.sleep(0)
        try:
            items.append(load_json(line))
        except orjson.JSONDecodeError:
            errors.append({"field": f"[{number}]", "message": "must be valid JSON"})
    if errors:
        raise InvalidBatch(errors)
    return items


async def _log(
    request: Request,
    db: Database,
    holder: KeyHolder,
    kind: str,
    items: list[tuple[str, NewEvent]],
) -> tuple[list[EventRecord], dict[str, str]]:
    """Store validated events, once per Idempotency-Key; their rows and the answer's headers."""
    try:
        key = idempotency(request.headers.get(IDEMPOTENCY_HEADER), kind, items)
    except InvalidIdempotencyKey as error:
        raise invalid(IDEMPOTENCY_HEADER, str(error)) from None
    try:
        logged = await db.writer.log(holder.org_id, items, key, key_id=holder.key_id)
    except IdempotencyKeyReused:
        raise Problem(
            422,
            f"This {IDEMPOTENCY_HEADER} was already used for a different request; "
            "send a new key for a new request.",
        ) from None
    except IdempotencyKeyInFlight:
        raise Problem(
            409,
            f"A request with this {IDEMPOTENCY_HEADER} is still being processed; "
            "retry once it is answered.",
            headers={"Retry-After": "1"},
        ) from None
    except WriteOutcomeUnknown:
        raise Problem(
            503,
            "The events may have been stored: the database did not confirm the commit and "
            f"could not be asked whether it landed. Retry with an {IDEMPOTENCY_HEADER} (the "
            "same one, if this request had one): a retry with the same key stores them once.",
            headers={"Retry-After": "1"},
        ) from None
    return logged.rows, {REPLAYED_HEADER: "true"} if logged.replayed else {}


class OrgEvents(HTTPEndpoint):
    """GET lists the org's events; POST logs a batch of them, all or nothing."""

    async def get(self, request: Request) -> JSONResponse:
        return await _event_list(request, allowed=(*LIST_PARAMETERS, "container_id"))

    async def post(self, request: Request) -> JSONResponse:
        db, holder = await authorized_org(request, Scope.WRITE)
        single_values(request.query_params, ())
        raw = await request.body()
        try:
            items = await parse_batch(
                await _batch_items(raw, request.headers.get("content-type", ""))
            )
        except InvalidBatch as error:
            raise invalid_fields(error.errors) from None
        rows, headers = await _log(request, db, holder, "batch", items)
        return JSONResponse(
            {
                "message": "Events logged successfully",
                "count": len(rows),
                "ids": [row["id"] for row in rows],
            },
            headers=headers,
        )


def filtered_events(event_filter: EventFilter) -> Callable[[Request], Awaitable[JSONResponse]]:
    """The endpoint of one of the five filter routes."""

    async def endpoint(request: Request) -> JSONResponse:
        return await _event_list(
            request, allowed=(*LIST_PARAMETERS, "container_id"), event_filter=event_filter
        )

    return endpoint


def _parse_new_event(raw: bytes) -> NewEvent:
    try:
        body = load_json(raw)
    except orjson.JSONDecodeError:
        raise invalid("body", "must be valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("body", 'must be a JSON object: the event, bare or as {"event": {...}}')
    prefix = ""
    if set(body) == {"event"}:
        body, prefix = body["event"], "event."
        if not isinstance(body, dict):
            raise invalid("event", "must be a JSON object")
    try:
        return NewEvent.model_validate(body)
    except ValidationError as error:
        errors = [
            {"field": prefix + item["field"], "message": item["message"]}
            for item in validation_errors(error)
        ]
        raise invalid_fields(errors) from None


class ContainerEvents(HTTPEndpoint):
    """GET lists one container's events; POST logs a new one."""

    async def get(self, request: Request) -> JSONResponse:
        return await _event_list(
            request,
            allowed=LIST_PARAMETERS,
            path_container_id=request.path_params["container_id"],
        )

    async def post(self, request: Request) -> JSONResponse:
        db, holder = await authorized_org(request, Scope.WRITE)
        container_id = checked_id("container_id", request.path_params["container_id"])
        single_values(request.query_params, ())
        new_event = _parse_new_event(await request.body())
        [row], headers = await _log(request, db, holder, "event", [(container_id, new_event)])
        return JSONResponse({"message": "Event logged successfully", "event": row}, headers=headers)


routes = [
    Route("/orgs/{org_id}/events", OrgEvents),
    *(
        Route(f"/orgs/{{org_id}}/container_events/{path}", filtered_events(event_filter))
        for path, event_filter in FILTER_PATHS.items()
    ),
    Route("/orgs/{org_id}/containers/{container_id}/events", ContainerEvents),
]
