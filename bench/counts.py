"""Dashboard counts at scale: totalCount per filter and a 24-hour window's buckets.

    python -m bench.counts --sizes 1000000,10000000

For org `bench` of each database: p50 and p99 over repeated runs of storage.counts'
count_events (all events, each of the five filters, the last 24 hours, the busiest container's
last 24 hours) and event_counts over the last 24 hours by each grouping, then under a filter and
for the busiest container. Every answer is also checked once against a plain COUNT over the
events table: a case that differs is marked `NOT EXACT`. Figures only; nothing asserts a time.
"""

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bench.latency import prepare
from bench.load import Manifest
from storage.counts import MAX_BUCKETS, CountBy, EventCounts, count_events, event_counts
from storage.database import Database
from storage.domain import EventFilter
from storage.events import Window, filter_column
from storage.models import events

RUNS = 30
WARM_UP = 3
# How much of SQLite's timestamp text names an HOUR or DAY bucket.
BUCKET_PREFIX = {CountBy.HOUR: 13, CountBy.DAY: 10}


@dataclass(frozen=True)
class Case:
    """One count: count_events when `by` is None, else event_counts grouped by it."""

    name: str
    by: CountBy | None
    event_filter: EventFilter | None = None
    container_id: str | None = None
    window: Window = Window()

    async def run(self, session: AsyncSession, org_id: str) -> int | EventCounts:
        selection = {"event_filter": self.event_filter, "container_id": self.container_id}
        if self.by is None:
            return await count_events(session, org_id=org_id, window=self.window, **selection)
        return await event_counts(
            session, org_id=org_id, window=self.window, by=self.by, **selection
        )

    async def reference(self, session: AsyncSession, org_id: str) -> object:
        """What a plain COUNT over the events table answers, in the form `comparable` gives."""
        criteria = [events.c.org_id == org_id]
        if self.event_filter is not None:
            column, value = filter_column(self.event_filter)
            criteria.append(column == value)
        if self.container_id is not None:
            criteria.append(events.c.container_id == self.container_id)
        if self.window.since is not None:
            criteria.append(events.c.timestamp >= self.window.since)
        if self.window.until is not None:
            criteria.append(events.c.timestamp < self.window.until)
        if self.by is None:
            query = select(func.count()).select_from(events).where(*criteria)
            return int((await session.execute(query)).scalar_one())
        key: Any
        if self.by in BUCKET_PREFIX:
            key = func.substr(events.c.timestamp, 1, BUCKET_PREFIX[self.by])
        else:
            key = events.c[
                {CountBy.TYPE: "event_type", CountBy.STATUS: "status"}.get(self.by, "container_id")
            ]
        query = select(key, func.count()).where(*criteria).group_by(key)
        found = {str(name): int(size) for name, size in (await session.execute(query)).all()}
        total = sum(found.values())
        if self.by in BUCKET_PREFIX:
            return found, total
        return sorted(found.items(), key=lambda item: (-item[1], item[0]))[:MAX_BUCKETS], total

    def comparable(self, answer: int | EventCounts) -> object:
        if isinstance(answer, int):
            return answer
        if self.by in BUCKET_PREFIX:
            width = BUCKET_PREFIX[self.by]
            found = {_sqlite_text(bucket.key)[:width]: bucket.count for bucket in answer.buckets}
            return {key: count for key, count in found.items() if count}, answer.total
        return [(bucket.key, bucket.count) for bucket in answer.buckets], answer.total


def _sqlite_text(rfc3339: str) -> str:
    moment = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def cases(manifest: Manifest) -> list[Case]:
    end = datetime.fromisoformat(manifest.span_end)
    day = Window(since=end - timedelta(days=1), until=end)
    busy = manifest.busy_container
    return [
        *[
            Case(f"totalCount {event_filter.value if event_filter else 'all'}", None, event_filter)
            for event_filter in (None, *EventFilter)
        ],
        Case("totalCount last 24h", None, window=day),
        *[Case(f"eventCounts last 24h by {by.value}", by, window=day) for by in CountBy],
        Case("totalCount busy container last 24h", None, container_id=busy, window=day),
        Case(
            "eventCounts last 24h FAIL by CONTAINER",
            CountBy.CONTAINER,
            EventFilter.FAIL,
            window=day,
        ),
        Case(
            "eventCounts last 24h busy container by HOUR",
            CountBy.HOUR,
            container_id=busy,
            window=day,
        ),
    ]


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


async def measure(path: Path, manifest: Manifest) -> dict[str, tuple[float, float, bool]]:
    """Each case's p50 and p99 in ms, and whether it answered what the events table counts."""
    db = Database(f"sqlite:///{path}")
    org = manifest.org_id
    found: dict[str, tuple[float, float, bool]] = {}
    try:
        async with db.session() as session:
            for case in cases(manifest):
                p50, p99 = await _timed(lambda case=case: case.run(session, org))
                answer = case.comparable(await case.run(session, org))
                found[case.name] = (p50, p99, answer == await case.reference(session, org))
    finally:
        await db.dispose()
    print(f"{manifest.events:,} events: org {org!r} holds {manifest.org_events:,}")
    return found


def measure_size(size: int) -> dict[str, tuple[float, float, bool]]:
    # Loaded first, outside the event loop: the loader runs its own.
    path, manifest, _cached = prepare(size, reload_stale=True)
    return asyncio.run(measure(path, manifest))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.counts", description=__doc__)
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated sizes")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = {size: measure_size(size) for size in sizes}
    print(f"\n{'case (p50 / p99 ms)':46}" + "".join(f"{size:>18,}" for size in sizes))
    for case in results[sizes[0]]:
        cells = "".join(
            f"{results[size][case][0]:9.2f} /{results[size][case][1]:7.2f}" for size in sizes
        )
        exact = all(results[size][case][2] for size in sizes)
        print(f"{case:46}{cells}{'' if exact else '  NOT EXACT'}")


if __name__ == "__main__":
    main()
