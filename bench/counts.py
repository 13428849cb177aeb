"""Dashboard counts at scale: totalCount per filter and a 24-hour window's buckets.

    python -m bench.counts --sizes 1000000,10000000

For org `bench` of each database: p50 and p99 over repeated runs of storage.counts'
count_events (all events, each of the five filters, the last 24 hours) and event_counts over
the last 24 hours by each grouping. Figures only; nothing here asserts a time.
"""

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from bench.latency import prepare
from storage.counts import CountBy, count_events, event_counts
from storage.database import Database
from storage.domain import EventFilter
from storage.events import Window

RUNS = 30
WARM_UP = 3


async def _timed(run: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    for _ in range(WARM_UP):
        await run()
    seconds = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await run()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return seconds[len(seconds) // 2] * 1000, seconds[int(len(seconds) * 0.99)] * 1000


async def measure(size: int) -> dict[str, tuple[float, float]]:
    path, manifest, _cached = prepare(size, reload_stale=True)
    db = Database(f"sqlite:///{path}")
    end = datetime.fromisoformat(manifest.span_end)
    day = Window(since=end - timedelta(days=1), until=end)
    org = manifest.org_id
    found: dict[str, tuple[float, float]] = {}
    try:
        async with db.session() as session:
            for event_filter in (None, *EventFilter):
                name = f"totalCount {event_filter.value if event_filter else 'all'}"
                found[name] = await _timed(
                    lambda f=event_filter: count_events(
                        session, org_id=org, event_filter=f, container_id=None, window=Window()
                    )
                )
            found["totalCount last 24h"] = await _timed(
                lambda: count_events(
                    session, org_id=org, event_filter=None, container_id=None, window=day
                )
            )
            for by in CountBy:
                found[f"eventCounts last 24h by {by.value}"] = await _timed(
                    lambda b=by: event_counts(session, org_id=org, window=day, by=b)
                )
    finally:
        await db.dispose()
    print(f"{size:,} events: org {org!r} holds {manifest.org_events:,}")
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.counts", description=__doc__)
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated sizes")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = {size: asyncio.run(measure(size)) for size in sizes}
    print(f"\n{'case (p50 / p99 ms)':36}" + "".join(f"{size:>18,}" for size in sizes))
    for case in results[sizes[0]]:
        cells = "".join(
            f"{results[size][case][0]:9.2f} /{results[size][case][1]:7.2f}" for size in sizes
        )
        print(f"{case:36}{cells}")


if __name__ == "__main__":
    main()
