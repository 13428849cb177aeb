"""Event ids become visible in order on PostgreSQL, and each commit is announced (NOTIFY).

Concurrent transactions draw ids from one sequence but may commit in any order; a poller that
reads "after the last id it saw" would skip an id committed after a larger one. SQLite has one
writer at a time, so these are PostgreSQL's tests.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from storage.database import Database
from storage.domain import NewEvent, Order
from storage.events import Page, list_events, log_events, store_events
from storage.notifications import (
    CHANNEL,
    Committed,
    InvalidNotice,
    decode_committed,
    encode_committed,
)
from tests.conftest import POSTGRES_URL_VARIABLE
from tests.factories import make_org, new_event

# How many events the concurrent writers store in the ordering test; 100_000 or more for the
# full run (about a minute on two cores), a smaller default keeps the suite quick.
EVENTS_VARIABLE = "EVENTS_GATEWAY_TEST_ORDERING_EVENTS"
DEFAULT_EVENTS = 20_000
WRITERS = 4  # Database instances, as separate server processes would have
TRANSACTIONS_PER_WRITER = 2  # concurrent transactions in each
BATCH = 50
# Long enough for a notice sent at a commit to arrive on a local connection.
NOTICE_WAIT_SECONDS = 0.5


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The suite's PostgreSQL database, emptied, with org `acme`."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(
            "commit order is a PostgreSQL matter (SQLite has one writer at a time): "
            f"set {POSTGRES_URL_VARIABLE}"
        )
    db = Database(url)
    try:
        await db.drop_schema()
        await db.create_schema()
        await make_org(db, "acme")
    except OSError as error:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL_VARIABLE} is not reachable: {error}")
    finally:
        await db.dispose()
    yield url


@asynccontextmanager
async def listening(url: str) -> AsyncIterator[asyncio.Queue[Committed]]:
    """The commit notices sent while inside, as they arrive."""
    notices: asyncio.Queue[Committed] = asyncio.Queue()
    connection = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )

    def received(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        notices.put_nowait(decode_committed(payload))

    await connection.add_listener(CHANNEL, received)
    try:
        yield notices
    finally:
        await connection.close()


async def no_notice(notices: asyncio.Queue[Committed]) -> bool:
    await asyncio.sleep(NOTICE_WAIT_SECONDS)
    return notices.empty()


def live_batch(size: int, container_id: str = "c") -> list[tuple[str, NewEvent]]:
    """Events of one container stamped now, as a live agent reports them (none late)."""
    now = datetime.now(UTC)
    return [(container_id, new_event(timestamp=now)) for _ in range(size)]


async def test_a_poller_reading_after_its_last_id_sees_every_concurrent_commit_once(
    postgres_url: str,
) -> None:
    total = int(os.environ.get(EVENTS_VARIABLE, DEFAULT_EVENTS))
    transactions = WRITERS * TRANSACTIONS_PER_WRITER
    batches = -(-total // (BATCH * transactions))  # per transaction, rounded up
    writers = [Database(postgres_url, group_commit=False) for _ in range(WRITERS)]
    poller = Database(postgres_url)
    committed: list[int] = []
    seen: list[int] = []
    seen_while_writing = 0
    writing = True

    async def write(db: Database, container_id: str) -> None:
        for _ in range(batches):
            # A container per transaction: shared ones would lock their rows from before the
            # insert to the commit and serialise the writers, hiding what is tested.
            logged = await db.writer.log("acme", live_batch(BATCH, container_id))
            committed.extend(row["id"] for row in logged.rows)

    async def poll() -> None:
        nonlocal seen_while_writing
        after_id: int | None = None
        async with poller.reader() as reader:
            while True:
                still_writing = writing  # read before the page: a page read after is final
                page = await list_events(
                    reader,
                    org_id="acme",
                    page=Page(limit=1000, after_id=after_id, order=Order.ASC),
                )
                seen.extend(row["id"] for row in page.rows)
                if page.rows:
                    after_id = page.rows[-1]["id"]
                    if still_writing:
                        seen_while_writing += len(page.rows)
                elif not still_writing:
                    return
                else:
                    await asyncio.sleep(0.001)

    started = time.monotonic()
    polling = asyncio.create_task(poll())
    try:
        await asyncio.gather(
            *(
                write(db, f"c{index}-{task}")
                for index, db in enumerate(writers)
                for task in range(TRANSACTIONS_PER_WRITER)
            )
        )
        writing = False
        await polling
    finally:
        polling.cancel()
        for db in [*writers, poller]:
            await db.dispose()
    seconds = time.monotonic() - started

    missed = set(committed) - set(seen)
    duplicated = len(seen) - len(set(seen))
    print(
        f"\n{len(committed)} events by {transactions} concurrent transactions, "
        f"{len(seen)} polled ({seen_while_writing} while writing): "
        f"{len(missed)} missed, {duplicated} duplicated, {seconds:.1f} s"
    )
    assert len(committed) >= total
    assert seen_while_writing > 0, "the poller must read while the writers write"
    assert (len(missed), duplicated) == (0, 0), f"missed: {sorted(missed)[:20]}"
    assert set(seen) == set(committed)


async def test_an_orgs_open_write_does_not_hold_back_another_orgs(postgres_url: str) -> None:
    first, second = Database(postgres_url), Database(postgres_url, group_commit=False)
    try:
        await make_org(first, "other")
        async with first.session() as session:
            await store_events(session, org_id="other", items=live_batch(1))
            # Still uncommitted: acme's write goes ahead all the same.
            logged = await asyncio.wait_for(second.writer.log("acme", live_batch(1)), 10)
            await session.rollback()
    finally:
        await first.dispose()
        await second.dispose()

    assert len(logged.rows) == 1


async def test_a_commit_notifies_the_id_range_it_stored(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        async with listening(postgres_url) as notices, db.session() as session:
            rows = await store_events(session, org_id="acme", items=live_batch(3))
            assert await no_notice(notices), "nothing is told before the commit"
            await session.commit()
            notice = await asyncio.wait_for(notices.get(), NOTICE_WAIT_SECONDS)
    finally:
        await db.dispose()

    assert notice == Committed("acme", rows[0]["id"], rows[-1]["id"])


async def test_a_rolled_back_write_notifies_nothing(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        async with listening(postgres_url) as notices:
            async with db.session() as session:
                await store_events(session, org_id="acme", items=live_batch(3))
                await session.rollback()
            assert await no_notice(notices)
            async with db.session() as session:
                [row] = await log_events(session, org_id="acme", items=live_batch(1))
            notice = await asyncio.wait_for(notices.get(), NOTICE_WAIT_SECONDS)
    finally:
        await db.dispose()

    assert notice == Committed("acme", row["id"], row["id"])


async def test_a_group_commit_notifies_each_org_once_with_its_own_ids(
    postgres_url: str,
) -> None:
    db = Database(postgres_url)
    try:
        await make_org(db, "other")
        async with listening(postgres_url) as notices:
            acme, other = await asyncio.gather(
                db.writer.log("acme", live_batch(2)), db.writer.log("other", live_batch(3))
            )
            received = {(await asyncio.wait_for(notices.get(), NOTICE_WAIT_SECONDS)) for _ in "ab"}
            assert await no_notice(notices)
    finally:
        await db.dispose()

    assert received == {
        Committed("acme", acme.rows[0]["id"], acme.rows[-1]["id"]),
        Committed("other", other.rows[0]["id"], other.rows[-1]["id"]),
    }


def test_a_notice_payload_reads_back_as_written() -> None:
    committed = Committed("acme", 100, 142)

    assert encode_committed(committed) == '{"org_id":"acme","first_id":100,"last_id":142}'
    assert decode_committed(encode_committed(committed)) == committed


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "[]",
        '{"org_id": "acme", "first_id": 1}',
        '{"org_id": 7, "first_id": 1, "last_id": 2}',
        '{"org_id": "acme", "first_id": "1", "last_id": 2}',
        '{"org_id": "acme", "first_id": 3, "last_id": 2}',
    ],
)
def test_a_payload_that_is_not_a_notice_is_refused(payload: str) -> None:
    with pytest.raises(InvalidNotice):
        decode_committed(payload)
