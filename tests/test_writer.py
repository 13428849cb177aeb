"""Group commit: concurrent writes share transactions, each answered only once committed."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.database import Database
from storage.events import EventRecord, Page, list_events
from storage.writer import EventWriter
from tests.factories import count_events, make_org, new_event

WRITERS = 40


def count_commits(db: Database) -> list[int]:
    commits = [0]

    def committed(_connection: Any) -> None:
        commits[0] += 1

    event.listen(db.engine.sync_engine, "commit", committed)
    return commits


async def visible_ids(db: Database) -> set[int]:
    async with db.reader() as reader:
        page = await list_events(reader, org_id="acme", page=Page(limit=1000))
    return {row["id"] for row in page.rows}


async def test_concurrent_writes_share_commits_and_each_is_visible_when_answered(
    db: Database,
) -> None:
    await make_org(db, "acme")
    commits = count_commits(db)
    unseen: list[int] = []

    async def write(index: int) -> EventRecord:
        [row] = (await db.writer.log("acme", [(f"c{index % 3}", new_event(index))])).rows
        # Answered: the event must already be committed, visible to another connection.
        if row["id"] not in await visible_ids(db):
            unseen.append(row["id"])
        return row

    rows = await asyncio.gather(*(write(index) for index in range(WRITERS)))

    assert unseen == []
    assert len({row["id"] for row in rows}) == WRITERS
    assert [row["timestamp"] for row in rows] == [new_event(i).timestamp for i in range(WRITERS)]
    assert await count_events(db) == WRITERS
    # The writes queued while a commit was running were committed together.
    assert commits[0] < WRITERS / 2, commits[0]


async def test_one_transaction_per_request_when_group_commit_is_off(database_url: str) -> None:
    db = Database(database_url, group_commit=False)
    try:
        if db.dialect == "postgresql":
            await db.drop_schema()
        await db.create_schema()
        await make_org(db, "acme")
        commits = count_commits(db)
        await asyncio.gather(
            *(db.writer.log("acme", [("c1", new_event(index))]) for index in range(10))
        )
        assert commits[0] == 10
        assert await count_events(db) == 10
    finally:
        await db.dispose()


async def test_a_write_the_database_refuses_fails_alone(db: Database) -> None:
    await make_org(db, "acme")
    # "ghost" is no org: its events break a foreign key, inside a group of good writes.
    writes = [db.writer.log("acme", [("c1", new_event(index))]) for index in range(10)]
    writes.insert(5, db.writer.log("ghost", [("c1", new_event(99))]))

    results = await asyncio.gather(*writes, return_exceptions=True)

    [failed] = [result for result in results if isinstance(result, BaseException)]
    assert results.index(failed) == 5
    assert isinstance(failed, IntegrityError)
    assert await count_events(db) == 10
    assert len(await visible_ids(db)) == 10


async def test_a_batch_in_a_group_is_stored_whole_and_in_order(db: Database) -> None:
    await make_org(db, "acme")
    batch = [(f"c{index}", new_event(index)) for index in range(50)]
    singles = [db.writer.log("acme", [("solo", new_event(index))]) for index in range(5)]

    *_, (batch_rows, _replayed) = await asyncio.gather(*singles, db.writer.log("acme", batch))

    assert [row["container_id"] for row in batch_rows] == [f"c{i}" for i in range(50)]
    ids = [row["id"] for row in batch_rows]
    assert ids == sorted(ids)
    assert await count_events(db) == 55


async def test_a_request_cancelled_while_waiting_does_not_lose_the_others(db: Database) -> None:
    await make_org(db, "acme")
    first = asyncio.create_task(db.writer.log("acme", [("c1", new_event(0))]))
    others = [asyncio.create_task(db.writer.log("acme", [("c1", new_event(i))])) for i in (1, 2)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    rows = await asyncio.gather(*others)
    await db.writer.drain()
    assert len(rows) == 2
    # The cancelled request's event was already handed over: it is stored, not half-written.
    assert await count_events(db) == 3


async def test_a_failing_commit_hook_neither_fails_nor_doubles_the_write(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await make_org(db, "acme")
    heard: list[int] = []

    def broken(_org_id: str, _rows: list[EventRecord]) -> None:
        raise RuntimeError("hook broke")

    db.writer.on_commit.extend([broken, lambda _org_id, rows: heard.extend(r["id"] for r in rows)])
    results = await asyncio.gather(
        *(db.writer.log("acme", [("c1", new_event(index))]) for index in range(5))
    )

    ids = [row["id"] for logged in results for row in logged.rows]
    assert sorted(heard) == sorted(ids)  # the hooks after the broken one still heard
    assert await count_events(db) == 5
    assert "a commit hook failed" in caplog.text


async def test_a_session_release_failing_after_the_commit_does_not_store_twice(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await make_org(db, "acme")

    @asynccontextmanager
    async def sessions_failing_on_release() -> AsyncIterator[AsyncSession]:
        async with db.session() as session:
            yield session
        raise ConnectionError("lost the connection while releasing it")

    writer = EventWriter(sessions_failing_on_release)
    results = await asyncio.gather(
        *(writer.log("acme", [("c1", new_event(index))]) for index in range(5))
    )

    assert len({row["id"] for logged in results for row in logged.rows}) == 5
    assert await count_events(db) == 5
    assert "releasing the writer's session failed after its commit" in caplog.text
