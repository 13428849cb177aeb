"""Mutation inputs built fast (schema.inputs.from_leaves), and large list variables coerced
and converted beside the event loop (schema.execution: GatewayExecutor and
convert_large_lists_beside_the_loop): the same results as the ordinary path, the same errors,
nothing stored when refused."""

import asyncio
import dataclasses
from typing import Any

import pytest
from graphql import coerce_input_value
from strawberry.types.arguments import convert_argument

from schema import build_schema
from schema.execution import THREADED_LIST_ITEMS
from schema.inputs import ContainerEventInput, NewContainerEventInput
from tests.factories import auth, count_events
from tests.graphql_client import graphql_data, only_error, post_graphql

LOG_EVENTS = """
mutation Log($orgId: ID!, $events: [NewContainerEventInput!]!) {
  logContainerEvents(orgId: $orgId, events: $events) { message count ids }
}
"""

INPUT_VALUES = [
    {"containerId": "c1", "eventType": "ACCESS"},
    {"containerId": "c1", "eventType": "BLOCK", "status": "FAILURE"},
    {"containerId": "c.2:x", "eventType": "EXPIRE", "timestamp": "2023-11-18T12:00:00Z"},
    {"containerId": "c3", "eventType": "EXPIRE", "timestamp": "2023-11-18T12:00:00.5+02:00"},
    {"containerId": "c4", "eventType": "CREATE", "actor": "ops@example.com"},
    {"containerId": "c5", "eventType": "ACCESS", "actor": None, "details": None},
    {"containerId": "c6", "eventType": "ACCESS", "timestamp": None, "status": "SUCCESS"},
    {"containerId": "c7", "eventType": "ACCESS", "details": {"ip": "10.0.0.1", "n": [1, 2.5]}},
    {"containerId": "c8", "eventType": "ACCESS", "details": [1, "two", None, True]},
    {"containerId": "c9", "eventType": "ACCESS", "details": "text"},
    {"containerId": 10, "eventType": "ACCESS", "details": 0},  # an ID may be given as an int
    {
        "containerId": "c11",
        "eventType": "BLOCK",
        "status": "FAILURE",
        "timestamp": "2023-11-18T12:00:00Z",
        "actor": "a",
        "details": {"deep": {"er": {}}},
    },
]


def fields_of(value: Any) -> tuple[str, dict[str, Any]]:
    """An input instance as its class name and its fields, each with its type."""
    return type(value).__name__, {
        name: (type(item).__name__, item) for name, item in dataclasses.asdict(value).items()
    }


@pytest.mark.parametrize("cls", [NewContainerEventInput, ContainerEventInput])
@pytest.mark.parametrize("value", INPUT_VALUES, ids=lambda value: str(value)[:60])
def test_an_input_is_built_as_strawberrys_own_conversion_builds_it(cls, value, monkeypatch):
    schema = build_schema()
    if cls is ContainerEventInput:
        value = {name: item for name, item in value.items() if name != "containerId"}
    graphql_type = schema._schema.get_type(cls.__strawberry_definition__.name)
    coerced = coerce_input_value(value, graphql_type)  # what graphql-core hands Strawberry

    def convert() -> Any:
        return convert_argument(
            coerced, cls, schema.schema_converter.scalar_registry, schema.config
        )

    fast = convert()
    monkeypatch.setattr(cls.__strawberry_definition__, "from_input", None)
    ordinary = convert()

    assert fields_of(fast) == fields_of(ordinary)


def event(number: int, **fields: object) -> dict[str, object]:
    return {
        "containerId": f"c{number % 7}",
        "eventType": ["ACCESS", "BLOCK", "CREATE", "EXPIRE"][number % 4],
        "status": "FAILURE" if number % 3 else "SUCCESS",
        "timestamp": f"2023-11-18T{number // 3600:02d}:{number // 60 % 60:02d}:{number % 60:02d}Z",
        "actor": f"user{number}@example.com" if number % 2 else None,
        "details": {"n": number, "tags": ["a", number]} if number % 4 else None,
        **fields,
    }


async def stored_events(client, key: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"order": "asc", "limit": 1000}
    while True:
        page = await client.get("/orgs/acme/events", params=params, headers=auth(key))
        assert page.status_code == 200, page.text
        body = page.json()
        rows += body["events"]
        if not body.get("next_cursor"):
            return rows
        params["cursor"] = body["next_cursor"]


SIZES = [THREADED_LIST_ITEMS, THREADED_LIST_ITEMS + 1]


async def test_a_list_above_the_threaded_size_is_stored_as_one_at_it(client, db, acme_key):
    """THREADED_LIST_ITEMS events take the ordinary path, one more the threaded one: the same
    events are stored, in input order, with the same fields."""
    stored: list[list[tuple[Any, ...]]] = []
    for size in SIZES:
        before = await count_events(db)
        events = [event(number) for number in range(size)]
        data = await graphql_data(client, acme_key, LOG_EVENTS, {"orgId": "acme", "events": events})
        logged = data["logContainerEvents"]
        assert logged["count"] == size
        assert len(logged["ids"]) == size
        assert await count_events(db) == before + size
        rows = (await stored_events(client, acme_key))[before:]
        assert [str(row["id"]) for row in rows] == logged["ids"]
        stored.append(
            [
                (row["container_id"], row["event_type"], row["status"], row["timestamp"])
                + (row["actor"], row["details"])
                for row in rows
            ]
        )
    assert stored[1][: len(stored[0])] == stored[0]


@pytest.mark.parametrize(
    "bad",
    [
        {"eventType": "SIDEWAYS"},  # not an enum value: graphql-core's coercion refuses it
        {"timestamp": "yesterday"},
        {"containerId": None},
        {"unknownField": 1},
        {"containerId": "no spaces allowed"},  # the resolver's own rule
        {"actor": "x" * 300},
    ],
    ids=lambda bad: next(iter(bad)),
)
async def test_a_bad_item_in_a_large_list_is_refused_as_in_a_small_one(client, db, acme_key, bad):
    answers = []
    for size in (3, THREADED_LIST_ITEMS + 20):
        events = [event(number) for number in range(size)]
        events[-2] = event(1, **bad)
        variables = {"orgId": "acme", "events": events}
        answer = await post_graphql(client, acme_key, LOG_EVENTS, variables)
        assert answer.get("data") in (None, {"logContainerEvents": None}), answer
        answers.append(only_error(answer))

    small, large = answers
    assert large["extensions"]["code"] == small["extensions"]["code"]
    assert large["message"].replace(f"[{THREADED_LIST_ITEMS + 18}]", "[1]") == small["message"]
    assert "Traceback" not in str(large)
    assert await count_events(db) == 0


async def test_a_large_list_where_no_list_may_go_is_refused(client, db, acme_key):
    query = """
    mutation One($orgId: ID!, $event: ContainerEventInput!) {
      logContainerEvent(orgId: $orgId, containerId: "c1", event: $event) { message }
    }
    """
    answer = await post_graphql(
        client,
        acme_key,
        query,
        {"orgId": "acme", "event": [event(number) for number in range(THREADED_LIST_ITEMS + 1)]},
    )
    assert answer.get("data") is None, answer
    error = only_error(answer)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "$event" in error["message"]
    assert await count_events(db) == 0


async def test_a_large_list_is_coerced_while_other_requests_are_served(client, db, acme_key):
    events = [event(number) for number in range(5000)]
    turns = 0
    posting = asyncio.ensure_future(
        post_graphql(client, acme_key, LOG_EVENTS, {"orgId": "acme", "events": events})
    )
    while not posting.done():
        turns += 1
        await asyncio.sleep(0.001)
    assert "errors" not in posting.result()
    assert turns > 10


async def test_a_large_list_keeps_its_idempotency_key(client, db, acme_key):
    query = """
    mutation Log($events: [NewContainerEventInput!]!, $key: String) {
      logContainerEvents(orgId: "acme", events: $events, idempotencyKey: $key) { count ids }
    }
    """
    variables = {"events": [event(number) for number in range(THREADED_LIST_ITEMS + 1)]}
    variables["key"] = "batch-7"
    first = await graphql_data(client, acme_key, query, variables)
    again = await graphql_data(client, acme_key, query, variables)

    assert again == first
    assert await count_events(db) == THREADED_LIST_ITEMS + 1
