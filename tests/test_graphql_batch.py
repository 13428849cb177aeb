"""GraphQL batch ingest: logContainerEvents, one transaction, all or nothing."""

from tests.factories import auth, count_events
from tests.graphql_client import graphql_data, only_error, post_graphql

LOG_EVENTS = """
mutation Log($orgId: ID!, $events: [NewContainerEventInput!]!) {
  logContainerEvents(orgId: $orgId, events: $events) { message count ids }
}
"""


def event(container_id: str, minute: int, **fields: object) -> dict[str, object]:
    return {
        "containerId": container_id,
        "eventType": "ACCESS",
        "timestamp": f"2023-11-18T12:{minute:02d}:00Z",
        **fields,
    }


async def test_a_batch_is_stored_and_answers_the_ids_in_input_order(client, db, acme_key):
    events = [
        event("vault-1", 0),
        event("vault-2", 1, eventType="BLOCK", status="FAILURE", details={"ip": "10.0.0.1"}),
        event("vault-1", 2, actor="ops@example.com"),
    ]

    data = await graphql_data(client, acme_key, LOG_EVENTS, {"orgId": "acme", "events": events})

    logged = data["logContainerEvents"]
    assert logged["message"] == "Events logged successfully"
    assert logged["count"] == 3
    listed = await client.get("/orgs/acme/events", params={"order": "asc"}, headers=auth(acme_key))
    stored = listed.json()["events"]
    assert [str(row["id"]) for row in stored] == logged["ids"]
    assert [(row["container_id"], row["event_type"], row["status"]) for row in stored] == [
        ("vault-1", "ACCESS", "SUCCESS"),
        ("vault-2", "BLOCK", "FAILURE"),
        ("vault-1", "ACCESS", "SUCCESS"),
    ]
    assert stored[1]["details"] == {"ip": "10.0.0.1"}
    assert stored[2]["actor"] == "ops@example.com"


async def test_every_bad_item_is_named_and_nothing_is_stored(client, db, acme_key):
    events = [
        event("c1", 0),
        event("no spaces allowed", 1),
        event("c1", 2, actor="x" * 300, details=[1, 2]),
    ]

    answer = await post_graphql(client, acme_key, LOG_EVENTS, {"orgId": "acme", "events": events})

    error = only_error(answer)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["field"] == "events[1].containerId"
    assert [item["field"] for item in error["extensions"]["errors"]] == [
        "events[1].containerId",
        "events[2].actor",
        "events[2].details",
    ]
    assert answer["data"] is None
    assert await count_events(db) == 0


async def test_an_empty_batch_is_bad_user_input(client, db, acme_key):
    answer = await post_graphql(client, acme_key, LOG_EVENTS, {"orgId": "acme", "events": []})

    error = only_error(answer)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["field"] == "events"
    assert await count_events(db) == 0


async def test_another_orgs_batch_is_not_found_and_stores_nothing(client, db, acme_key, other_key):
    answer = await post_graphql(
        client, acme_key, LOG_EVENTS, {"orgId": "other", "events": [event("c1", 0)]}
    )

    assert only_error(answer)["extensions"]["code"] == "NOT_FOUND"
    assert await count_events(db) == 0
