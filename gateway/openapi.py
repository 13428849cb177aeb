"""The OpenAPI 3.1 document of the REST shim, built from the same constants as its routes."""

import json
from http import HTTPStatus
from typing import Any

from storage.counts import MAX_BUCKETS, CountBy
from storage.domain import MAX_ACTOR_LENGTH, MAX_BATCH_EVENTS, EventFilter, EventStatus, EventType
from storage.events import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}
TIME_SCHEMA = {"type": "string", "format": "date-time"}

FILTER_SUMMARIES = {
    "by_access": "Retrieve Container Events by Access",
    "by_block": "Retrieve Container Events by Block",
    "by_create": "Retrieve Container Events by Creation Date",
    "by_expire": "Retrieve Container Events by Expiration Date",
    "by_fail": "Retrieve Failed Container Events",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# The legacy specification's one example (Create a Container Event), and what the gateway
# answers around it: the examples below are built from these, as the docs page shows them.
SPEC_EVENT = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z", "status": "SUCCESS"}
SPEC_MESSAGE = "Event logged successfully"
EXAMPLE_EVENT: dict[str, Any] = {
    "id": 101,
    "org_id": "acme",
    "container_id": "vault-1",
    **SPEC_EVENT,
    "received_at": "2023-11-18T12:00:00.120000Z",
    "actor": None,
    "details": {},
    "key_id": "key_9ed16792ae947ba2",
}
EXAMPLE_FAILURE: dict[str, Any] = {
    "container_id": "vault-2",
    "event_type": "BLOCK",
    "status": "FAILURE",
    "timestamp": "2023-11-18T12:00:05Z",
    "actor": "agent-42",
    "details": {"ip": "10.0.0.7"},
}
_TYPE_NAMES = [f"'{member.value}'" for member in EventType]
EVENT_TYPE_RULE = f"must be one of {', '.join(_TYPE_NAMES[:-1])} or {_TYPE_NAMES[-1]}"


def _problem(
    description: str, status: int, detail: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    example: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        example["errors"] = errors
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem"), "example": example}},
    }


def _errors(*, needed: str, bad_field: str, rule: str) -> dict[str, Any]:
    """The errors every operation answers; `needed` the scope it takes, `bad_field` and
    `rule` the 400 of its example."""
    other = "write" if needed == "read" else "read"
    return {
        "400": _problem(
            "Invalid input or parameters; `errors` names each offending field.",
            400,
            f"{bad_field}: {rule}",
            [{"field": bad_field, "message": rule}],
        ),
        "401": {
            **_problem(
                "Missing, unknown or revoked API key.",
                401,
                "An API key is required: send 'Authorization: Bearer <key>'.",
            ),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        "403": _problem(
            "The API key's scope does not allow this: reading needs `read`, writing `write` "
            "(`admin` allows both).",
            403,
            f"This API key cannot {needed} events: its scope is {other}. "
            f"Use a key with the {needed} scope.",
        ),
        "404": _problem(
            "Unknown organization or container, or another organization's.",
            404,
            "Organization 'ghost' not found.",
        ),
        "429": {
            **_problem(
                "Over the key's rate limit (only when the server sets one: "
                "EVENTS_GATEWAY_RATE_LIMIT); retry after `Retry-After` seconds.",
                429,
                "Rate limit exceeded for this API key; retry in 12 s.",
            ),
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        },
    }


ERRORS = _errors(needed="read", bad_field="limit", rule=f"must be between 1 and {MAX_PAGE_SIZE}")
WRITE_ERRORS = _errors(needed="write", bad_field="event_type", rule=EVENT_TYPE_RULE)
BATCH_ERRORS = _errors(needed="write", bad_field="[1].event_type", rule=EVENT_TYPE_RULE)

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe. A retry with the same key (scoped to the org, kept at least 24 "
        "hours) and the same events answers what the first request answered, with "
        "`Idempotent-Replayed: true`, and stores nothing; the same key with other events "
        "answers 422; a retry while the first request is still being written answers 409 "
        "(retry it once that one is answered)."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
IDEMPOTENCY_ERRORS = {
    "409": {
        **_problem(
            "A request with this Idempotency-Key is still being processed.",
            409,
            "A request with this Idempotency-Key is still being processed; "
            "retry once it is answered.",
        ),
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    },
    "422": _problem(
        "This Idempotency-Key was already used for a different request.",
        422,
        "This Idempotency-Key was already used for a different request; "
        "send a new key for a new request.",
    ),
    "503": {
        **_problem(
            "The database did not confirm the commit and could not be asked whether it "
            "landed: the events may have been stored. Retry with the same Idempotency-Key.",
            503,
            "The events may have been stored: the database did not confirm the commit and "
            "could not be asked whether it landed. Retry with an Idempotency-Key (the same "
            "one, if this request had one): a retry with the same key stores them once.",
        ),
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    },
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this answer repeats an earlier request's (same key).",
        "schema": {"type": "string", "enum": ["true"]},
    }
}

PATH_PARAMETERS = {
    name: {"name": name, "in": "path", "required": True, "schema": ID_SCHEMA}
    for name in ("org_id", "container_id")
}

LIST_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "description": "Page size.",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE_SIZE,
            "default": DEFAULT_PAGE_SIZE,
        },
    },
    {
        "name": "cursor",
        "in": "query",
        "description": "Opaque position from a previous `next_cursor`.",
        "schema": {"type": "string"},
    },
    {
        "name": "since",
        "in": "query",
        "description": "Only events whose timestamp is at or after this RFC 3339 time.",
        "schema": TIME_SCHEMA,
    },
    {
        "name": "until",
        "in": "query",
        "description": "Only events whose timestamp is before this RFC 3339 time.",
        "schema": TIME_SCHEMA,
    },
    {
        "name": "order",
        "in": "query",
        "description": "`desc` (newest first) or `asc`; case does not matter.",
        "schema": {"type": "string", "enum": ["desc", "asc", "DESC", "ASC"], "default": "desc"},
    },
]

CONTAINER_FILTER = {
    "name": "container_id",
    "in": "query",
    "description": "Only this container's events.",
    "schema": ID_SCHEMA,
}


def _case_free(names: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": [*names, *(name.lower() for name in names)]}


COUNT_PARAMETERS = [
    {
        "name": "since",
        "in": "query",
        "required": True,
        "description": "Count events whose timestamp is at or after this RFC 3339 time.",
        "schema": TIME_SCHEMA,
    },
    {
        "name": "until",
        "in": "query",
        "required": True,
        "description": (
            "Count events whose timestamp is before this RFC 3339 time. By `hour` or `day`, "
            f"the window may touch at most {MAX_BUCKETS} buckets."
        ),
        "schema": TIME_SCHEMA,
    },
    {
        "name": "by",
        "in": "query",
        "required": True,
        "description": (
            "Group by event type, status, container (the "
            f"{MAX_BUCKETS} busiest), hour or day (UTC); case does not matter."
        ),
        "schema": _case_free([member.value for member in CountBy]),
    },
    {
        "name": "filter",
        "in": "query",
        "description": "Count only what one of the five filters lists; case does not matter.",
        "schema": _case_free([member.value for member in EventFilter]),
    },
    CONTAINER_FILTER,
]


def _event_list(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "One page of events.",
                    "headers": {
                        "Link": {
                            "description": 'The next page: `<url>; rel="next"`, when there is one.',
                            "schema": {"type": "string"},
                        }
                    },
                    "content": {
                        "application/json": {
                            "schema": _ref("EventList"),
                            "example": {"events": [EXAMPLE_EVENT], "next_cursor": "ZTEwMQ"},
                        }
                    },
                },
                **ERRORS,
            },
        }
    }


def _components() -> dict[str, Any]:
    event_types = [member.value for member in EventType]
    statuses = [member.value for member in EventStatus]
    new_event: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["event_type"],
        "properties": {
            "event_type": {
                **_case_free(event_types),
                "description": f"One of {', '.join(event_types)}; case does not matter.",
                "examples": ["ACCESS"],
            },
            "status": {
                **_case_free(statuses),
                "description": "SUCCESS (the default) or FAILURE; case does not matter.",
                "examples": ["SUCCESS"],
            },
            "timestamp": {
                **TIME_SCHEMA,
                "description": "When it happened, with a timezone; now when omitted.",
            },
            "actor": {"type": ["string", "null"], "maxLength": MAX_ACTOR_LENGTH},
            "details": {
                "type": ["object", "null"],
                "description": "Free-form JSON object, at most 16 KiB serialised.",
            },
        },
        "example": {
            "event_type": "ACCESS",
            "timestamp": "2023-11-18T12:00:00Z",
            "status": "SUCCESS",
        },
    }
    return {
        "schemas": {
            "Event": {
                "type": "object",
                "required": [
                    "id",
                    "org_id",
                    "container_id",
                    "event_type",
                    "status",
                    "timestamp",
                    "received_at",
                    "actor",
                    "details",
                    "key_id",
                ],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "integer", "description": "Ever-increasing across the gateway."},
                    "org_id": ID_SCHEMA,
                    "container_id": ID_SCHEMA,
                    "event_type": {"type": "string", "enum": event_types},
                    "status": {"type": "string", "enum": statuses},
                    "timestamp": TIME_SCHEMA,
                    "received_at": TIME_SCHEMA,
                    "actor": {"type": ["string", "null"]},
                    "details": {"type": "object"},
                    "key_id": {
                        "type": ["string", "null"],
                        "description": "The id of the API key that wrote the event (never its "
                        "secret); null for events written without one (the command line).",
                    },
                },
            },
            "EventList": {
                "type": "object",
                "required": ["events", "next_cursor"],
                "additionalProperties": False,
                "properties": {
                    "events": {"type": "array", "items": _ref("Event")},
                    "next_cursor": {"type": ["string", "null"]},
                },
            },
            "EventCounts": {
                "type": "object",
                "required": ["by", "since", "until", "counts", "total"],
                "additionalProperties": False,
                "properties": {
                    "by": {"type": "string", "enum": [member.value.lower() for member in CountBy]},
                    "since": TIME_SCHEMA,
                    "until": TIME_SCHEMA,
                    "counts": {
                        "type": "array",
                        "description": (
                            "By hour or day: every bucket of the window, oldest first, empty "
                            "ones as 0. Otherwise: the keys that occur, largest count first."
                        ),
                        "items": {
                            "type": "object",
                            "required": ["key", "count"],
                            "additionalProperties": False,
                            "properties": {
                                "key": {
                                    "type": "string",
                                    "description": (
                                        "Event type, status or container id; by hour or day, "
                                        "the bucket's start as an RFC 3339 UTC time."
                                    ),
                                },
                                "count": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                    "total": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Every matching event of the window.",
                    },
                },
            },
            "NewEvent": new_event,
            "NewContainerEvent": {
                **new_event,
                "required": ["container_id", *new_event["required"]],
                "properties": {"container_id": ID_SCHEMA, **new_event["properties"]},
                "example": {"container_id": "vault-1", **new_event["example"]},
            },
            "EventsLogged": {
                "type": "object",
                "required": ["message", "count", "ids"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string", "const": "Events logged successfully"},
                    "count": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_EVENTS},
                    "ids": {
                        "type": "array",
                        "description": "The new events' ids, in the order they were sent.",
                        "items": {"type": "integer"},
                    },
                },
            },
            "WrappedNewEvent": {
                "type": "object",
                "additionalProperties": False,
                "required": ["event"],
                "properties": {"event": _ref("NewEvent")},
            },
            "EventLogged": {
                "type": "object",
                "required": ["message", "event"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string", "const": "Event logged successfully"},
                    "event": _ref("Event"),
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {
                                "field": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The REST shim as OpenAPI 3.1."""
    org = PATH_PARAMETERS["org_id"]
    container = PATH_PARAMETERS["container_id"]
    paths: dict[str, Any] = {
        "/orgs/{org_id}/events": _event_list(
            "Retrieve Events for an Organization", [org, CONTAINER_FILTER, *LIST_PARAMETERS]
        ),
    }
    paths["/orgs/{org_id}/events"]["post"] = {
        "summary": "Log a Batch of Container Events",
        "description": (
            f"Up to {MAX_BATCH_EVENTS:,} events, each naming its container, as a JSON array or "
            "as NDJSON (one event object per line, `Content-Type: application/x-ndjson`). All "
            "or nothing: if any item is invalid, the answer is 400 with `errors` naming every "
            "bad item as `[index].field`, and nothing is stored; otherwise every event is "
            "committed in one transaction before the answer, which lists the new ids in input "
            "order. Containers are registered on first use."
        ),
        "parameters": [org, IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_BATCH_EVENTS,
                        "items": _ref("NewContainerEvent"),
                    },
                    "example": [{"container_id": "vault-1", **SPEC_EVENT}, EXAMPLE_FAILURE],
                },
                "application/x-ndjson": {
                    "schema": {
                        "type": "string",
                        "description": "One NewContainerEvent JSON object per line.",
                    },
                    "example": "".join(
                        json.dumps(event) + "\n"
                        for event in ({"container_id": "vault-1", **SPEC_EVENT}, EXAMPLE_FAILURE)
                    ),
                },
            },
        },
        "responses": {
            "200": {
                "description": "Every event of the batch is committed.",
                "headers": REPLAYED,
                "content": {
                    "application/json": {
                        "schema": _ref("EventsLogged"),
                        "example": {
                            "message": "Events logged successfully",
                            "count": 2,
                            "ids": [101, 102],
                        },
                    }
                },
            },
            **BATCH_ERRORS,
            **IDEMPOTENCY_ERRORS,
            "413": _problem(
                "The request body is over the batch size limit.",
                413,
                "The request body is larger than 33554432 bytes.",
            ),
        },
    }
    paths["/orgs/{org_id}/events/counts"] = {
        "get": {
            "summary": "Count an Organization's Events",
            "description": "Counts for dashboards: the events of a window, grouped.",
            "parameters": [org, *COUNT_PARAMETERS],
            "responses": {
                "200": {
                    "description": "The window's counts.",
                    "content": {
                        "application/json": {
                            "schema": _ref("EventCounts"),
                            "example": {
                                "by": "hour",
                                "since": "2023-11-18T00:00:00Z",
                                "until": "2023-11-18T03:00:00Z",
                                "counts": [
                                    {"key": "2023-11-18T00:00:00Z", "count": 12},
                                    {"key": "2023-11-18T01:00:00Z", "count": 0},
                                    {"key": "2023-11-18T02:00:00Z", "count": 5},
                                ],
                                "total": 17,
                            },
                        }
                    },
                },
                **ERRORS,
            },
        }
    }
    for path, summary in FILTER_SUMMARIES.items():
        paths[f"/orgs/{{org_id}}/container_events/{path}"] = _event_list(
            summary, [org, CONTAINER_FILTER, *LIST_PARAMETERS]
        )
    container_path = _event_list("Retrieve Container Events", [org, container, *LIST_PARAMETERS])
    container_path["post"] = {
        "summary": "Create a Container Event",
        "description": "Registers the container on first use. Answers once the event is committed.",
        "parameters": [org, container, IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [_ref("NewEvent"), _ref("WrappedNewEvent")]},
                    "examples": {
                        "specification": {
                            "summary": "The legacy specification's example request",
                            "value": SPEC_EVENT,
                        },
                        "wrapped": {
                            "summary": 'The same event wrapped as {"event": ...}',
                            "value": {"event": SPEC_EVENT},
                        },
                        "failure": {
                            "summary": "A failed attempt, with actor and details",
                            "value": {
                                key: value
                                for key, value in EXAMPLE_FAILURE.items()
                                if key != "container_id"
                            },
                        },
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "Event logged successfully.",
                "headers": REPLAYED,
                "content": {
                    "application/json": {
                        "schema": _ref("EventLogged"),
                        # The specification's example response, with the event it logged.
                        "example": {"message": SPEC_MESSAGE, "event": EXAMPLE_EVENT},
                    }
                },
            },
            **WRITE_ERRORS,
            **IDEMPOTENCY_ERRORS,
            "413": _problem(
                "The request body is over the size limit.",
                413,
                "The request body is larger than 1048576 bytes.",
            ),
        },
    }
    paths["/orgs/{org_id}/containers/{container_id}/events"] = container_path
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Events Gateway REST shim",
            "version": "1.0.0",
            "description": (
                "Track and manage events related to containers and organizations, including "
                "access, creation, expiration, and failure events. Every list answers "
                '`{"events": [...], "next_cursor": ...}` and pages with cursors.'
            ),
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": _components(),
    }
