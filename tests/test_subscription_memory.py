"""What subscriptions hold in memory: one process-wide budget over every org's tail.

Each org followed in a process has a tail holding its newest events for its subscribers
(storage.broker). Their estimated bytes together stay within the broker's `memory_bytes`
(EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB): past it the largest tails forget their oldest events,
and a subscriber behind what its tail still holds reads the database, so none misses or
repeats an event.
"""

import asyncio
import random
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any

import orjson
import pytest

from gateway.app import create_app
from gateway.config import Settings
from storage import broker as broker_module
from storage.broker import Broker, fan_out, follow_events, newest_event_id, record_bytes
from storage.database import Database
from storage.domain import Order
from storage.events import EventRecord
from tests.factories import make_org, new_event

RECEIVE_TIMEOUT = 20.0

# Shapes of details, from one small value to 16 KiB (the limit) of many small ones.
DETAILS: dict[str, Any] = {
    "none": {},
    "small": {"n": 1},
    "typical": {"ip": "10.0.0.1", "reason": "bad password", "attempt": 3},
    "one long string": {"blob": "x" * 16_000},
    "many keys": {f"k{i}": i for i in range(1_000)},
    "list of ints": {"l": list(range(3_000))},
    "nested lists": {"a": [{"b": [1, "x", None, True, 1.5]} for _ in range(450)]},
    "non-ASCII": {"s": "é" * 5_000},
    "floats": {"f": [random.random() for _ in range(800)]},
    "short strings": {"s": [str(i) for i in range(2_500)]},
}


def _decoded_record(index: int, details: dict[str, Any]) -> EventRecord:
    """A record as reads build it: fresh strings, datetimes and decoded details."""
    row = {
        **new_event(index).model_dump(),
        "id": 1_000_000 + index,
        "org_id": f"org-{index}",
        "container_id": f"vault-{index:06}",
        "received_at": new_event(index).timestamp,
        "details": orjson.loads(orjson.dumps(details)),
        "key_id": f"key-{index:08}",
    }
    return row  # type: ignore[return-value]


@pytest.mark.parametrize("shape", DETAILS)
def test_the_estimate_of_a_held_event_is_from_above_and_close(shape: str):
    details = DETAILS[shape]
    tracemalloc.start()
    try:
        rows = [_decoded_record(index, details) for index in range(100)]
        measured, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimated = sum(record_bytes(row) for row in rows)

    assert measured <= estimated <= 3 * measured + 100_000, (shape, measured, estimated)


async def _stream(db: Database, broker: Broker, org_id: str, stack: AsyncExitStack):
    subscriber = await stack.enter_async_context(broker.follow(db, org_id))
    start = await newest_event_id(db, org_id)
    return await stack.enter_async_context(aclosing(follow_events(db, subscriber, after_id=start)))


async def _take(events: AsyncIterator[EventRecord], count: int) -> list[int]:
    async def take() -> list[int]:
        return [(await anext(events))["id"] for _ in range(count)]

    return await asyncio.wait_for(take(), RECEIVE_TIMEOUT)


async def _tails_settled(broker: Broker, top_ids: dict[str, int]) -> None:
    """Until every org's tail has read up to its newest event."""

    async def settled() -> None:
        while any(broker._tails[org].top_id < top for org, top in top_ids.items()):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(settled(), RECEIVE_TIMEOUT)


async def test_tails_of_many_orgs_hold_no_more_than_the_budget_and_lose_no_event(
    db: Database,
):
    orgs = [f"org{n}" for n in range(6)]
    for org in orgs:
        await make_org(db, org)
    budget = 400_000  # some twenty events of 16 KiB, for six orgs writing 60 each
    broker = Broker(poll_seconds=60, memory_bytes=budget)
    big = {"blob": "y" * 16_000}
    written: dict[str, list[int]] = {org: [] for org in orgs}
    held: list[int] = []
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(fan_out(db, broker))
        streams = {org: await _stream(db, broker, org, stack) for org in orgs}
        for round_ in range(6):
            for org in orgs:
                batch = [("c1", new_event(round_ * 10 + i, details=big)) for i in range(10)]
                written[org] += [row["id"] for row in (await db.writer.log(org, batch)).rows]
            await _tails_settled(broker, {org: ids[-1] for org, ids in written.items()})
            held.append(broker.held_bytes())
        # Read only now: each subscriber is far behind what its tail still holds.
        received = {org: await _take(streams[org], len(written[org])) for org in orgs}

    assert max(held) <= budget, held
    assert min(held) > budget // 2, "the tails should be using the budget, not dropping all"
    assert received == written


async def test_the_largest_tails_give_first(db: Database):
    for org in ("busy", "quiet"):
        await make_org(db, org)
    broker = Broker(poll_seconds=60, memory_bytes=300_000)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(fan_out(db, broker))
        streams = {org: await _stream(db, broker, org, stack) for org in ("busy", "quiet")}
        quiet = (await db.writer.log("quiet", [("c1", new_event(i)) for i in range(5)])).rows
        await _tails_settled(broker, {"quiet": quiet[-1]["id"]})
        quiet_held = broker._tails["quiet"].held_bytes
        busy: list[int] = []
        for _round in range(4):
            batch = [("c1", new_event(i, details={"blob": "z" * 16_000})) for i in range(10)]
            busy += [row["id"] for row in (await db.writer.log("busy", batch)).rows]
            await _tails_settled(broker, {"busy": busy[-1]})
        assert broker._tails["quiet"].held_bytes == quiet_held  # its few events stay
        assert broker.held_bytes() <= 300_000
        assert await _take(streams["busy"], len(busy)) == busy
        assert await _take(streams["quiet"], 5) == [row["id"] for row in quiet]


async def test_with_no_budget_subscribers_read_everything_from_the_database(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(broker_module, "FOLLOW_PAGE_SIZE", 7)
    await make_org(db, "acme")
    broker = Broker(poll_seconds=60, memory_bytes=0)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(fan_out(db, broker))
        events = await _stream(db, broker, "acme", stack)
        ids: list[int] = []
        for round_ in range(3):
            batch = [("c1", new_event(round_ * 20 + i)) for i in range(20)]
            ids += [row["id"] for row in (await db.writer.log("acme", batch)).rows]
            assert await _take(events, 20) == ids[-20:]
        assert broker.held_bytes() == 0


async def test_reads_of_large_events_come_in_pages_of_about_a_mebibyte(
    db: Database, monkeypatch: pytest.MonkeyPatch
):
    limits: list[int] = []
    list_events = broker_module.list_events

    async def recording(*args: Any, **kwargs: Any) -> Any:
        if kwargs["page"].order is Order.ASC:  # not the newest event's id, read at the start
            limits.append(kwargs["page"].limit)
        return await list_events(*args, **kwargs)

    monkeypatch.setattr(broker_module, "list_events", recording)
    await make_org(db, "acme")
    small = (await db.writer.log("acme", [("c1", new_event(i)) for i in range(600)])).rows
    large = [("c1", new_event(i, details={"blob": "q" * 16_000})) for i in range(800)]
    large_ids = [row["id"] for row in (await db.writer.log("acme", large)).rows]
    broker = Broker(poll_seconds=60, memory_bytes=0)  # every read goes to the database
    async with broker.follow(db, "acme") as subscriber:
        limits.clear()
        events = follow_events(db, subscriber, after_id=0)
        async with aclosing(events):
            got = await _take(events, 1_400)

    assert got == [row["id"] for row in small] + large_ids
    # Sized by the page read before: small events grow it to its most, and once 16 KiB
    # events arrive (the third page holds 420), pages are about a MiB, some sixty of them.
    assert limits[:3] == [broker_module.FIRST_PAGE_SIZE, 500, 500], limits
    assert all(40 <= limit <= 80 for limit in limits[3:]), limits
    assert 40 <= limits[-1] <= 70, limits


def test_the_budget_is_one_setting_in_mebibytes(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB", "16")
    settings = Settings.from_env(database_url=f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    assert settings.subscription_memory_mb == 16
    app = create_app(settings)
    assert app.state.broker.memory_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB must be an integer, got 'lots'"),
        ("-1", "EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB must be at least 0, got '-1'"),
    ],
)
def test_a_bad_budget_stops_the_start_with_its_name(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
):
    monkeypatch.setenv("EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB", value)
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env()
    assert str(stopped.value) == message
