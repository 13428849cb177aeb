"""Idempotency keys: a retry returns the first answer and stores nothing new."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from storage import writer as storage_writer
from storage.database import Database
from storage.idempotency import IdempotencyKeyInFlight, idempotency
from storage.models import idempotency_keys, utcnow
from tests.factories import auth, count_events, make_org, new_event
from tests.graphql_client import graphql_data, only_error, post_graphql
from tests.rest_assertions import assert_problem

SINGLE = "/orgs/acme/containers/vault-1/events"
BATCH = "/orgs/acme/events"
EVENT = {"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z", "details": {"ip": "1.2.3.4"}}


def keyed(api_key: str, key: str) -> dict[str, str]:
    return {**auth(api_key), "Idempotency-Key": key}


async def key_count(db: Database) -> int:
    async with db.session() as session:
        return (
            await session.execute(select(func.count()).select_from(idempotency_keys))
        ).scalar_one()


async def test_a_retried_post_returns_the_first_answer_and_stores_nothing(client, db, acme_key):
    first = await client.post(SINGLE, json=EVENT, headers=keyed(acme_key, "retry-1"))
    # The same event, spelled differently (key order, wrapper): the same request.
    retry = await client.post(
        SINGLE,
        json={"event": {"details": {"ip": "1.2.3.4"}, **EVENT}},
        headers=keyed(acme_key, "retry-1"),
    )

    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert await count_events(db) == 1


async def test_a_retry_of_an_event_stamped_by_the_server_is_the_same_request(client, db, acme_key):
    # No timestamp: the server stamps the event with the time it arrives, differently each
    # time; the retry still asks for the same thing.
    unstamped = {"event_type": "ACCESS", "actor": "agent-7"}
    first = await client.post(SINGLE, json=unstamped, headers=keyed(acme_key, "unstamped"))
    retry = await client.post(SINGLE, json=unstamped, headers=keyed(acme_key, "unstamped"))
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    stamped = {**unstamped, "timestamp": first.json()["event"]["timestamp"]}
    other = await client.post(SINGLE, json=stamped, headers=keyed(acme_key, "unstamped"))
    assert_problem(other, 422)
    assert await count_events(db) == 1


async def test_a_key_reused_for_another_request_is_refused_and_stores_nothing(client, db, acme_key):
    await client.post(SINGLE, json=EVENT, headers=keyed(acme_key, "k"))

    other_event = await client.post(
        SINGLE, json={**EVENT, "event_type": "BLOCK"}, headers=keyed(acme_key, "k")
    )
    other_container = await client.post(
        "/orgs/acme/containers/vault-2/events", json=EVENT, headers=keyed(acme_key, "k")
    )
    as_batch = await client.post(
        BATCH, json=[{**EVENT, "container_id": "vault-1"}], headers=keyed(acme_key, "k")
    )

    for answer in (other_event, other_container, as_batch):
        body = assert_problem(answer, 422)
        assert "Idempotency-Key" in body["detail"]
    assert await count_events(db) == 1


async def test_keys_belong_to_their_org(client, db, acme_key, other_key):
    mine = await client.post(SINGLE, json=EVENT, headers=keyed(acme_key, "shared"))
    theirs = await client.post(
        "/orgs/other/containers/vault-1/events", json=EVENT, headers=keyed(other_key, "shared")
    )
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["event"]["id"] != theirs.json()["event"]["id"]
    assert await count_events(db) == 2


async def test_a_retried_batch_returns_the_first_ids(client, db, acme_key):
    batch = [{**EVENT, "container_id": f"c{index}"} for index in range(5)]
    first = await client.post(BATCH, json=batch, headers=keyed(acme_key, "batch-1"))
    retry = await client.post(BATCH, json=batch, headers=keyed(acme_key, "batch-1"))
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert await count_events(db) == 5


async def test_a_retry_while_the_first_is_in_flight_is_a_conflict(client, db, acme_key):
    answers = await asyncio.gather(
        *(client.post(SINGLE, json=EVENT, headers=keyed(acme_key, "racing")) for _ in range(2))
    )
    assert sorted(answer.status_code for answer in answers) == [200, 409]
    [conflict] = [answer for answer in answers if answer.status_code == 409]
    assert "still being processed" in assert_problem(conflict, 409)["detail"]
    assert conflict.headers["retry-after"] == "1"
    # Once the first is answered, the retry replays it.
    [done] = [answer for answer in answers if answer.status_code == 200]
    retry = await client.post(SINGLE, json=EVENT, headers=keyed(acme_key, "racing"))
    assert retry.json() == done.json()
    assert await count_events(db) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "ключ".encode()])
async def test_a_bad_key_is_a_bad_request_and_stores_nothing(client, db, acme_key, key):
    headers: dict[str, str | bytes] = {**auth(acme_key), "Idempotency-Key": key}
    for path, body in ((SINGLE, EVENT), (BATCH, [{**EVENT, "container_id": "c1"}])):
        answer = await client.post(path, json=body, headers=headers)
        assert_problem(answer, 400, field="Idempotency-Key")
    assert await count_events(db) == 0
    assert await key_count(db) == 0


async def test_the_longest_key_is_accepted(client, db, acme_key):
    answer = await client.post(SINGLE, json=EVENT, headers=keyed(acme_key, "k" * 255))
    assert answer.status_code == 200


async def test_keys_are_kept_a_day_then_pruned(client, db, acme_key, monkeypatch):
    monkeypatch.setattr(storage_writer, "PRUNE_EVERY_SECONDS", 0.0)
    for key in ("old", "recent"):
        await client.post(SINGLE, json=EVENT, headers=keyed(acme_key, key))
    async with db.session() as session:
        for key, age in (("old", timedelta(hours=24, minutes=1)), ("recent", timedelta(hours=23))):
            await session.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.key == key)
                .values(created_at=utcnow() - age)
            )
        await session.commit()

    # Any write prunes what is past its day.
    await client.post(SINGLE, json=EVENT, headers=auth(acme_key))

    async with db.session() as session:
        kept = (await session.execute(select(idempotency_keys.c.key))).scalars().all()
    assert sorted(kept) == ["recent"]
    recent = await client.post(
        SINGLE, json={**EVENT, "event_type": "BLOCK"}, headers=keyed(acme_key, "recent")
    )
    assert_problem(recent, 422)
    reused = await client.post(
        SINGLE, json={**EVENT, "event_type": "BLOCK"}, headers=keyed(acme_key, "old")
    )
    assert reused.status_code == 200
    assert await count_events(db) == 4


async def test_a_key_taken_by_another_process_meanwhile_replays_its_events(db: Database) -> None:
    """Two gateway processes, one database: the second looks the key up before the first
    commits, then finds it taken when it commits, and answers what the first stored."""
    await make_org(db, "acme")
    other = Database(db.url)
    try:
        items = [("c1", new_event(0))]
        once = idempotency("shared", "event", items)
        first = await db.writer.log("acme", items, once)
        looked_up = other.writer._stored_answer

        async def missed_then_found(*args):  # the lookup raced the first process's commit
            other.writer._stored_answer = looked_up
            return None

        other.writer._stored_answer = missed_then_found
        second = await other.writer.log("acme", items, once)

        assert second.replayed and not first.replayed
        assert second.rows == first.rows
        assert await count_events(db) == 1
    finally:
        await other.dispose()


async def test_in_flight_is_known_before_the_first_write_is_queued(db: Database) -> None:
    await make_org(db, "acme")
    items = [("c1", new_event(0))]
    once = idempotency("k", "event", items)
    first = asyncio.create_task(db.writer.log("acme", items, once))
    await asyncio.sleep(0)
    with pytest.raises(IdempotencyKeyInFlight):
        await db.writer.log("acme", items, once)
    assert not (await first).replayed


LOG_EVENT = """
mutation Log($key: String, $event: ContainerEventInput!) {
  logContainerEvent(orgId: "acme", containerId: "vault-1", event: $event, idempotencyKey: $key) {
    event { id }
  }
}
"""
LOG_EVENTS = """
mutation Log($key: String, $events: [NewContainerEventInput!]!) {
  logContainerEvents(orgId: "acme", events: $events, idempotencyKey: $key) { ids }
}
"""
GRAPHQL_EVENT = {"eventType": "ACCESS", "timestamp": "2023-11-18T12:00:00Z"}


async def test_graphql_retries_with_a_key_return_the_first_event(client, db, acme_key):
    variables = {"key": "g-1", "event": GRAPHQL_EVENT}
    first = await graphql_data(client, acme_key, LOG_EVENT, variables)
    retry = await graphql_data(client, acme_key, LOG_EVENT, variables)
    assert retry == first

    batch = {"key": "g-2", "events": [{**GRAPHQL_EVENT, "containerId": "c1"}] * 3}
    first_batch = await graphql_data(client, acme_key, LOG_EVENTS, batch)
    assert await graphql_data(client, acme_key, LOG_EVENTS, batch) == first_batch
    assert await count_events(db) == 4


async def test_graphql_key_reuse_and_bad_keys_are_coded_errors(client, db, acme_key):
    await graphql_data(client, acme_key, LOG_EVENT, {"key": "g", "event": GRAPHQL_EVENT})

    reused = await post_graphql(
        client, acme_key, LOG_EVENT, {"key": "g", "event": {**GRAPHQL_EVENT, "eventType": "BLOCK"}}
    )
    error = only_error(reused)
    assert error["extensions"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert error["extensions"]["field"] == "idempotencyKey"

    bad = await post_graphql(client, acme_key, LOG_EVENT, {"key": "", "event": GRAPHQL_EVENT})
    error = only_error(bad)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["field"] == "idempotencyKey"
    assert await count_events(db) == 1
