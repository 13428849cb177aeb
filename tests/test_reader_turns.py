"""Read connections are handed out first come, first served: a request that reads twice (a
container, then its events) queues again behind those already waiting, instead of taking
the connection it has just given back before the waiter it woke can run (which sent the p99
of such requests to several times their p50 under concurrency)."""

import asyncio

from storage.database import Database


async def test_a_connection_given_back_goes_to_the_longest_waiter(db: Database) -> None:
    order: list[str] = []
    release = asyncio.Event()
    holding = asyncio.Event()
    held = 0

    async def hold(name: str) -> None:
        nonlocal held
        async with db.reader():
            held += 1
            if held == 2:
                holding.set()
            await release.wait()
        if name == "first":  # reads again at once, as soon as it gave its connection back
            async with db.reader():
                order.append("first, again")

    async def wait(name: str) -> None:
        async with db.reader():
            order.append(name)

    holders = [asyncio.create_task(hold(name)) for name in ("first", "second")]
    await holding.wait()  # both read connections are taken
    waiters = []
    for name in ("waiter 1", "waiter 2"):
        waiters.append(asyncio.create_task(wait(name)))
        await asyncio.sleep(0)  # queued in this order
    release.set()
    await asyncio.gather(*holders, *waiters)

    assert order[:2] == ["waiter 1", "waiter 2"]
    assert order[2] == "first, again"


async def test_a_waiter_cancelled_in_line_takes_no_connection_with_it(db: Database) -> None:
    async with db.reader(), db.reader():
        gone = asyncio.create_task(_read(db))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
    # Both connections are back: two readers at once still get theirs.
    found = await asyncio.wait_for(asyncio.gather(_read(db), _read(db)), timeout=5)
    assert found == [1, 1]


async def _read(db: Database) -> int:
    async with db.reader() as reader:
        rows = await reader._run("SELECT 1", [])
        return int(rows[0][0])
