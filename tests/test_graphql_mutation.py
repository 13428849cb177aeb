"""The logContainerEvent mutation: stores the event, answers it, rejects bad input whole."""

from datetime import datetime
from typing import Any

import pytest

from tests.factories import auth, count_events, make_events
from tests.graphql_client import EVENT_FIELDS, graphql_data, only_error, post_graphql

LOG = f"""
mutation Log($orgId: ID!, $containerId: ID!, $event: ContainerEventInput!) {{
  logContainerEvent(orgId: $orgId, containerId: $containerId, event: $event) {{
    message
    event {{ {EVENT_FIELDS} }}
  }}
}}
"""


async def log(client, key: str, event: dict[str, Any], **ids: str) -> dict[str, Any]:
    variables = {"orgId": "acme", "containerId": "c1", **ids, "event": event}
    return await post_graphql(client, key, LOG, variables)


async def test_log_container_event_stores_and_returns_the_event(client, db, acme_key):
    event = {
        "eventType": "ACCESS",
        "status": "FAILURE",
        "timestamp": "2023-11-18T13:00:00+01:00",
        "actor": "alice",
        "details": {"ip": "10.0.0.1", "attempt": 3},
    }

    data = await graphql_data(
        client, acme_key, LOG, {"orgId": "acme", "containerId": "c1", "event": event}
    )

    payload = data["logContainerEvent"]
    assert payload["message"] == "Event logged successfully"
    logged = payload["event"]
    assert logged["eventType"] == "ACCESS"
    assert logged["status"] == "FAILURE"
    assert datetime.fromisoformat(logged["timestamp"]) == datetime.fromisoformat(
        "2023-11-18T12:00:00+00:00"
    )
    assert logged["actor"] == "alice"
    assert logged["details"] == {"ip": "10.0.0.1", "attempt": 3}
    assert logged["container"] == {"id": "c1"}
    rest = await client.get("/orgs/acme/container_events/by_fail", headers=auth(acme_key))
    [stored] = rest.json()["events"]
    assert stored["id"] == int(logged["id"])
    assert stored["details"] == {"ip": "10.0.0.1", "attempt": 3}
    assert await count_events(db) == 1


async def test_log_container_event_fills_in_defaults(client, db, acme_key):
    before = datetime.now().astimezone()

    data = await graphql_data(
        client,
        acme_key,
        LOG,
        {"orgId": "acme", "containerId": "new-box", "event": {"eventType": "CREATE"}},
    )

    logged = data["logContainerEvent"]["event"]
    assert logged["status"] == "SUCCESS"
    assert logged["actor"] is None
    assert logged["details"] == {}
    assert datetime.fromisoformat(logged["timestamp"]) >= before.replace(microsecond=0)


async def test_a_logged_event_registers_its_container(client, db, acme_key):
    await log(client, acme_key, {"eventType": "CREATE"}, containerId="fresh")

    data = await graphql_data(
        client, acme_key, '{ org(id: "acme") { container(id: "fresh") { id } } }'
    )

    assert data["org"]["container"] == {"id": "fresh"}


@pytest.mark.parametrize(
    ("event", "ids", "field"),
    [
        ({"eventType": "ACCESS", "timestamp": "2023-11-18T12:00:00"}, {}, "event.timestamp"),
        ({"eventType": "ACCESS", "details": {"blob": "x" * (16 * 1024)}}, {}, "event.details"),
        ({"eventType": "ACCESS", "details": ["not", "an", "object"]}, {}, "event.details"),
        ({"eventType": "ACCESS", "actor": "a" * 257}, {}, "event.actor"),
        ({"eventType": "ACCESS"}, {"containerId": "has space"}, "containerId"),
        ({"eventType": "ACCESS"}, {"containerId": "x" * 129}, "containerId"),
    ],
    ids=[
        "naive-timestamp",
        "oversized-details",
        "details-not-an-object",
        "actor-too-long",
        "container-id-charset",
        "container-id-too-long",
    ],
)
async def test_bad_input_names_the_field_and_stores_nothing(
    client, db, acme_key, event, ids, field
):
    answer = await log(client, acme_key, event, **ids)

    assert answer["data"] is None
    error = only_error(answer)
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    assert field in error["message"]
    assert await count_events(db) == 0


async def test_an_integer_beyond_64_bits_in_details_is_bad_user_input_in_variables(
    client, db, acme_key
):
    answer = await log(client, acme_key, {"eventType": "ACCESS", "details": {"n": 2**64}})

    error = only_error(answer)
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "event.details"}
    assert "beyond 64 bits" in error["message"]
    assert await count_events(db) == 0


async def test_an_integer_beyond_64_bits_in_details_is_bad_user_input_in_the_document(
    client, db, acme_key
):
    document = """
    mutation {
      logContainerEvent(orgId: "acme", containerId: "c1",
                        event: {eventType: ACCESS, details: {n: 18446744073709551616}}) {
        message
      }
    }
    """
    answer = await post_graphql(client, acme_key, document)

    error = only_error(answer)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "beyond 64 bits" in error["message"]
    assert await count_events(db) == 0


async def test_an_actor_of_256_characters_is_accepted(client, db, acme_key):
    answer = await log(client, acme_key, {"eventType": "ACCESS", "actor": "a" * 256})

    assert "errors" not in answer
    assert await count_events(db) == 1


@pytest.mark.parametrize(
    "event",
    [
        {"eventType": "REBOOT"},
        {"eventType": "ACCESS", "status": "MAYBE"},
        {"eventType": "ACCESS", "timestamp": "yesterday"},
        {"eventType": "ACCESS", "unknown": 1},
        {"status": "SUCCESS"},
    ],
    ids=["unknown-type", "unknown-status", "garbage-timestamp", "unknown-field", "no-type"],
)
async def test_input_the_schema_rejects_is_bad_user_input(client, db, acme_key, event):
    answer = await log(client, acme_key, event)

    assert only_error(answer)["extensions"]["code"] == "BAD_USER_INPUT"
    assert await count_events(db) == 0


async def test_logging_into_another_org_is_not_found_and_stores_nothing(
    client, db, acme_key, other_key
):
    answer = await log(client, acme_key, {"eventType": "ACCESS"}, orgId="other")
    unknown = await log(client, acme_key, {"eventType": "ACCESS"}, orgId="nope")

    assert only_error(answer)["extensions"] == {"code": "NOT_FOUND"}
    assert only_error(answer)["message"] == "Organization 'other' not found."
    assert only_error(unknown)["message"] == "Organization 'nope' not found."
    assert await count_events(db) == 0


async def test_the_other_org_does_not_see_a_logged_event(client, db, acme_key, other_key):
    await make_events(db, "acme", [("c1", {})])
    await log(client, acme_key, {"eventType": "ACCESS"})

    data = await graphql_data(
        client, other_key, '{ org(id: "other") { events { edges { cursor } } } }'
    )

    assert data["org"]["events"]["edges"] == []
