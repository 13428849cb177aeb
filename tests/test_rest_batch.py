"""REST shim, batch ingest: POST /orgs/{org_id}/events, a JSON array or NDJSON, all or nothing."""

import orjson
import pytest
from sqlalchemy import select

from storage.domain import BATCH_SLICE, MAX_BATCH_EVENTS
from storage.models import events
from tests.factories import auth, count_events
from tests.rest_assertions import assert_problem

BATCH = "/orgs/acme/events"


def event(container_id: str, minute: int, **fields: object) -> dict[str, object]:
    return {
        "container_id": container_id,
        "event_type": "ACCESS",
        "timestamp": f"2023-11-18T12:{minute:02d}:00Z",
        **fields,
    }


async def listed(client, key: str, path: str = BATCH) -> list[dict[str, object]]:
    answer = await client.get(path, params={"order": "asc"}, headers=auth(key))
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


async def test_a_json_array_is_stored_in_one_go_and_answers_the_ids_in_input_order(
    client, db, acme_key
):
    batch = [
        event("vault-1", 0),
        event("vault-2", 1, event_type="block", status="failure", actor="ops@example.com"),
        event("vault-1", 2, details={"ip": "10.0.0.1"}),
    ]

    answer = await client.post(BATCH, json=batch, headers=auth(acme_key))

    assert answer.status_code == 200, answer.text
    logged = answer.json()
    assert logged["message"] == "Events logged successfully"
    assert logged["count"] == 3
    stored = await listed(client, acme_key)
    assert [row["id"] for row in stored] == logged["ids"]
    assert [(row["container_id"], row["event_type"], row["status"]) for row in stored] == [
        ("vault-1", "ACCESS", "SUCCESS"),
        ("vault-2", "BLOCK", "FAILURE"),
        ("vault-1", "ACCESS", "SUCCESS"),
    ]
    assert stored[1]["actor"] == "ops@example.com"
    assert stored[2]["details"] == {"ip": "10.0.0.1"}
    # Containers are registered on first use, as by the single-event POST.
    assert len(await listed(client, acme_key, "/orgs/acme/containers/vault-2/events")) == 1


async def test_ndjson_takes_one_event_per_line(client, db, acme_key):
    lines = [orjson.dumps(event("c1", minute)) for minute in range(3)]
    body = b"\n".join([lines[0], b"", lines[1], lines[2]]) + b"\n"  # blank lines are skipped

    answer = await client.post(
        BATCH,
        content=body,
        headers={**auth(acme_key), "Content-Type": "application/x-ndjson; charset=utf-8"},
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["count"] == 3
    assert [row["id"] for row in await listed(client, acme_key)] == answer.json()["ids"]


async def test_every_bad_item_is_named_by_index_and_field_and_nothing_is_stored(
    client, db, acme_key
):
    batch = [
        event("c1", 0),
        {"event_type": "ACCESS"},
        event("c1", 2, event_type="SIDEWAYS", actor="x" * 300),
        "not an event",
        event("no spaces allowed", 4, colour="red"),
    ]

    answer = await client.post(BATCH, json=batch, headers=auth(acme_key))

    problem = assert_problem(answer, 400)
    assert [error["field"] for error in problem["errors"]] == [
        "[1].container_id",
        "[2].event_type",
        "[2].actor",
        "[3]",
        "[4].container_id",
        "[4].colour",
    ]
    assert all(error["message"] for error in problem["errors"])
    assert await count_events(db) == 0


async def test_bad_items_far_apart_in_a_large_batch_are_each_named_by_their_own_index(
    client, db, acme_key
):
    # Validated a slice at a time (storage.domain.BATCH_SLICE): indexes are the whole batch's.
    batch = [event("c1", index % 60) for index in range(BATCH_SLICE * 2 + 500)]
    bad = [3, BATCH_SLICE, BATCH_SLICE * 2 + 499]
    for index in bad:
        batch[index] = event("c1", 0, event_type="SIDEWAYS")

    answer = await client.post(BATCH, json=batch, headers=auth(acme_key))

    problem = assert_problem(answer, 400)
    assert [error["field"] for error in problem["errors"]] == [f"[{i}].event_type" for i in bad]
    assert await count_events(db) == 0


async def test_a_large_batch_is_stored_whole_in_input_order(client, db, acme_key):
    batch = [event(f"c{index % 7}", index % 60, actor=str(index)) for index in range(2500)]

    answer = await client.post(BATCH, json=batch, headers=auth(acme_key))

    assert answer.status_code == 200, answer.text
    assert answer.json()["count"] == 2500
    stored = {row["id"]: row for row in await listed_all(client, acme_key)}
    assert [stored[event_id]["actor"] for event_id in answer.json()["ids"]] == [
        str(index) for index in range(2500)
    ]


async def listed_all(client, key: str) -> list[dict[str, object]]:
    answer = await client.get(BATCH, params={"order": "asc", "limit": 1000}, headers=auth(key))
    found = answer.json()["events"]
    while answer.json()["next_cursor"]:
        params = {"order": "asc", "limit": 1000, "cursor": answer.json()["next_cursor"]}
        answer = await client.get(BATCH, params=params, headers=auth(key))
        found += answer.json()["events"]
    return found


async def test_a_bad_ndjson_line_is_named_and_nothing_is_stored(client, db, acme_key):
    body = orjson.dumps(event("c1", 0)) + b"\n{not json\n" + orjson.dumps(event("c1", 1))

    answer = await client.post(
        BATCH, content=body, headers={**auth(acme_key), "Content-Type": "application/x-ndjson"}
    )

    problem = assert_problem(answer, 400, "[1]")
    assert problem["errors"] == [{"field": "[1]", "message": "must be valid JSON"}]
    assert await count_events(db) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
async def test_an_integer_beyond_64_bits_in_details_names_its_item_and_nothing_is_stored(
    client, db, acme_key, content_type
):
    wide = b'{"container_id": "c1", "event_type": "ACCESS", "details": {"n": 18446744073709551616}}'
    good = orjson.dumps(event("c1", 0))
    body = (
        good + b"\n" + wide if content_type.endswith("ndjson") else b"[" + good + b"," + wide + b"]"
    )

    answer = await client.post(
        BATCH, content=body, headers={**auth(acme_key), "Content-Type": content_type}
    )

    problem = assert_problem(answer, 400, "[1].details")
    assert "beyond 64 bits" in problem["errors"][0]["message"]
    assert await count_events(db) == 0


@pytest.mark.parametrize(
    "body",
    [[], {"events": []}, event("c1", 0), [event("c1", 0)] * (MAX_BATCH_EVENTS + 1)],
    ids=["empty", "object", "single_event", "over_the_limit"],
)
async def test_a_body_that_is_not_a_batch_of_1_to_10000_events_is_refused(
    client, db, acme_key, body
):
    answer = await client.post(BATCH, json=body, headers=auth(acme_key))

    assert_problem(answer, 400, "body")
    assert await count_events(db) == 0


async def test_a_body_that_is_not_json_is_refused(client, db, acme_key):
    answer = await client.post(
        BATCH, content=b"[{", headers={**auth(acme_key), "Content-Type": "application/json"}
    )

    assert_problem(answer, 400, "body")
    assert await count_events(db) == 0


async def test_a_full_batch_fits_though_it_is_over_the_single_event_body_limit(
    client, db, acme_key
):
    batch = [
        event(f"c{index % 50}", index % 60, actor=f"agent-{index:05d}@example.com")
        for index in range(10_000)
    ]
    assert len(orjson.dumps(batch)) > 1024 * 1024

    answer = await client.post(BATCH, json=batch, headers=auth(acme_key))

    assert answer.status_code == 200, answer.text
    ids = answer.json()["ids"]
    assert len(ids) == 10_000 and ids == sorted(ids)
    # Each answered id is the event sent at its place, across SQLite's multi-row INSERTs.
    async with db.session() as session:
        stored = await session.execute(select(events.c.id, events.c.actor))
        actor_of = dict(stored.all())
    assert [actor_of[event_id] for event_id in ids] == [item["actor"] for item in batch]


async def test_another_orgs_batch_path_is_not_found_and_stores_nothing(
    client, db, acme_key, other_key
):
    answer = await client.post("/orgs/other/events", json=[event("c1", 0)], headers=auth(acme_key))

    assert_problem(answer, 404)
    assert await count_events(db) == 0


async def test_a_batch_without_a_key_is_unauthenticated(client, db, acme_key):
    answer = await client.post(BATCH, json=[event("c1", 0)])

    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert await count_events(db) == 0
