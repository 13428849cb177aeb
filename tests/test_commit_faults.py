"""A lost COMMIT answer: the commit lands, then the connection fails before saying so.

The driver's commit is patched where SQLAlchemy's adapters call it (asyncpg's
Transaction.commit, aiosqlite's Connection.commit) to commit and then raise what a dropped
connection raises. Concurrent POSTs (single events and batches, some with an Idempotency-Key)
make groups form in the writer. Every event carries a unique marker in its details
({"n": marker}), so each stored row is traced back to the write that sent it. Whatever the
faults, a write answered 2xx is stored exactly once under the ids it was answered with, a
write answered with any other error is not stored at all, and only the 503 that says the
events may have been stored leaves the client not knowing.
"""

import asyncio
import random
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import asyncpg
import httpx
import pytest
from sqlalchemy import select

import storage.writer
from storage.database import Database
from storage.models import events
from tests.factories import auth, count_events
from tests.graphql_client import only_error, post_graphql
from tests.rest_assertions import assert_problem

SEED = 20231118
WRITES = 120
LOST_ANSWER_CHANCE = 0.3
CONTAINERS = 5
MAY_HAVE_BEEN_STORED = "may have been stored"
TIMESTAMP = "2023-11-18T12:00:00Z"


def drop_connection_at_commit(
    monkeypatch: pytest.MonkeyPatch, db: Database, *, chance: float, lands: bool = True
) -> list[int]:
    """Make each commit (with this chance, seeded) fail as a dropped connection does: after
    committing when `lands`, before it otherwise. The list counts the commits that failed."""
    failed = [0]
    draw = random.Random(SEED)

    def fails() -> bool:
        if draw.random() >= chance:
            return False
        failed[0] += 1
        return True

    if db.dialect == "postgresql":
        real_commit = asyncpg.transaction.Transaction.commit

        async def commit(transaction: asyncpg.transaction.Transaction) -> None:
            failing = fails()
            if lands or not failing:
                await real_commit(transaction)
            if failing:
                transaction._connection.terminate()  # the connection is really gone
                raise asyncpg.exceptions.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation"
                )

        monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", commit)
    else:
        real_sqlite_commit = aiosqlite.Connection.commit

        async def sqlite_commit(connection: aiosqlite.Connection) -> None:
            failing = fails()
            if lands or not failing:
                await real_sqlite_commit(connection)
            if failing:
                raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(aiosqlite.Connection, "commit", sqlite_commit)
    return failed


@dataclass
class Write:
    """One POST: its events' markers, and what it was answered."""

    markers: list[int]
    batch: bool
    key: str | None
    status: int = 0
    ids: list[int] = field(default_factory=list)
    detail: str = ""

    def may_have_been_stored(self) -> bool:
        return self.status == 503 and MAY_HAVE_BEEN_STORED in self.detail


def planned_writes(count: int) -> list[Write]:
    """Singles and batches of 2 to 4, every third with an Idempotency-Key."""
    draw = random.Random(SEED)
    writes, marker = [], 0
    for index in range(count):
        batch = index % 2 == 1
        size = draw.randint(2, 4) if batch else 1
        key = f"write-{index}" if index % 3 == 0 else None
        writes.append(Write(list(range(marker, marker + size)), batch, key))
        marker += size
    return writes


def event_body(marker: int) -> dict[str, Any]:
    return {"event_type": "ACCESS", "timestamp": TIMESTAMP, "details": {"n": marker}}


async def send(client: httpx.AsyncClient, api_key: str, write: Write) -> None:
    headers = auth(api_key)
    if write.key is not None:
        headers["Idempotency-Key"] = write.key
    if write.batch:
        body = [
            {"container_id": f"c{marker % CONTAINERS}", **event_body(marker)}
            for marker in write.markers
        ]
        answer = await client.post("/orgs/acme/events", json=body, headers=headers)
    else:
        [marker] = write.markers
        path = f"/orgs/acme/containers/c{marker % CONTAINERS}/events"
        answer = await client.post(path, json=event_body(marker), headers=headers)
    write.status = answer.status_code
    if answer.status_code == 200:
        logged = answer.json()
        write.ids = logged["ids"] if write.batch else [logged["event"]["id"]]
    else:
        write.detail = answer.json()["detail"]


async def stored_ids(db: Database) -> dict[int, list[int]]:
    """The ids stored under each marker."""
    async with db.session() as session:
        rows = await session.execute(select(events.c.id, events.c.details))
    found: dict[int, list[int]] = defaultdict(list)
    for event_id, details in rows:
        found[details["n"]].append(event_id)
    return found


def assert_each_write_stored_as_answered(writes: list[Write], stored: dict[int, list[int]]) -> None:
    assert {marker: ids for marker, ids in stored.items() if len(ids) > 1} == {}, "doubled"
    for write in writes:
        found = [stored.get(marker, []) for marker in write.markers]
        if write.status == 200:
            assert found == [[event_id] for event_id in write.ids], write
        elif write.may_have_been_stored():
            assert all(found) or not any(found), write  # whole or not at all
        else:
            assert not any(found), f"answered {write.status} {write.detail!r}, yet stored"


@pytest.fixture
async def announced(db: Database) -> Counter[int]:
    """How many times each event id was announced to the commit hooks (storage.broker's)."""
    heard: Counter[int] = Counter()
    db.writer.on_commit.append(lambda _org_id, rows: heard.update(row["id"] for row in rows))
    return heard


async def test_lost_commit_answers_leave_every_write_stored_once_and_answered(
    client, db, acme_key, announced, monkeypatch
):
    writes = planned_writes(WRITES)
    failed = drop_connection_at_commit(monkeypatch, db, chance=LOST_ANSWER_CHANCE)

    await asyncio.gather(*(send(client, acme_key, write) for write in writes))

    assert failed[0] > 0
    assert Counter(write.status for write in writes) == {200: WRITES}
    stored = await stored_ids(db)
    assert_each_write_stored_as_answered(writes, stored)
    assert set(announced.values()) == {1}
    assert set(announced) == {event_id for ids in stored.values() for event_id in ids}


async def test_commits_that_fail_before_landing_leave_failed_writes_unstored(
    client, db, acme_key, announced, monkeypatch
):
    writes = planned_writes(WRITES // 2)
    failed = drop_connection_at_commit(monkeypatch, db, chance=LOST_ANSWER_CHANCE, lands=False)

    await asyncio.gather(*(send(client, acme_key, write) for write in writes))

    assert failed[0] > 0
    # A group that failed was retried write by write: most are stored, alone.
    assert sum(write.status == 200 for write in writes) > len(writes) / 2
    stored = await stored_ids(db)
    assert_each_write_stored_as_answered(writes, stored)
    assert set(announced.values()) <= {1}


async def test_without_group_commit_a_lost_commit_answer_is_resolved_too(
    client, db, acme_key, announced, monkeypatch
):
    db.writer.group_commit = False
    writes = planned_writes(12)
    failed = drop_connection_at_commit(monkeypatch, db, chance=1.0)

    await asyncio.gather(*(send(client, acme_key, write) for write in writes))

    assert failed[0] == len(writes)
    assert Counter(write.status for write in writes) == {200: len(writes)}
    assert_each_write_stored_as_answered(writes, await stored_ids(db))
    assert set(announced.values()) == {1}


def make_the_database_unreachable_after_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup that tells whether a commit landed fails, as on a database still down."""

    async def unreachable(*_args: object, **_kwargs: object) -> bool:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(storage.writer, "is_committed", unreachable)
    monkeypatch.setattr(storage.writer, "RESOLVE_SECONDS", 0.3)


async def test_a_commit_that_cannot_be_resolved_answers_503_may_have_been_stored(
    client, db, acme_key, monkeypatch
):
    drop_connection_at_commit(monkeypatch, db, chance=1.0)
    make_the_database_unreachable_after_commit(monkeypatch)
    headers = {**auth(acme_key), "Idempotency-Key": "unresolved"}

    answer = await client.post(
        "/orgs/acme/containers/c1/events", json=event_body(1), headers=headers
    )

    body = assert_problem(answer, 503)
    assert MAY_HAVE_BEEN_STORED in body["detail"] and "Idempotency-Key" in body["detail"]
    # It was stored: answering it as failed would have been a lie. A retry with its key
    # (the database reachable again) replays it.
    monkeypatch.undo()
    assert await count_events(db) == 1
    retried = await client.post(
        "/orgs/acme/containers/c1/events", json=event_body(1), headers=headers
    )
    assert retried.status_code == 200, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert await count_events(db) == 1


LOG = """
mutation Log($event: ContainerEventInput!) {
  logContainerEvent(orgId: "acme", containerId: "c1", event: $event, idempotencyKey: "once") {
    event { id }
  }
}
"""


async def test_graphql_codes_a_commit_that_cannot_be_resolved_write_outcome_unknown(
    client, db, acme_key, monkeypatch
):
    drop_connection_at_commit(monkeypatch, db, chance=1.0)
    make_the_database_unreachable_after_commit(monkeypatch)

    answer = await post_graphql(
        client, acme_key, LOG, {"event": {"eventType": "ACCESS", "timestamp": TIMESTAMP}}
    )

    error = only_error(answer)
    assert error["extensions"]["code"] == "WRITE_OUTCOME_UNKNOWN"
    assert MAY_HAVE_BEEN_STORED in error["message"]
