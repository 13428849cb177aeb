"""Bulk-load a SQLite database with N realistic events for the read benchmarks.

    python -m bench.load --events 1000000

The schema (tables and indexes) comes from storage's own metadata; the rows are written with
the synchronous sqlite3 driver in large transactions, because logging millions of events
through the gateway's async write path would take hours. Every column holds exactly what
`storage.events.log_events` would store for the same event.
"""

import argparse
import asyncio
import bisect
import hashlib
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Table, create_engine, func, literal, select, union_all
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel
from tqdm import tqdm

from storage import windows
from storage.counts import DAY_HOURS, DAY_STEP, FINEST, FineKey, hour_of, key_columns
from storage.database import Database
from storage.domain import EventStatus, EventType
from storage.models import (
    containers,
    counts_by_container,
    counts_by_org,
    counts_by_org_hour,
    event_zones,
    events,
    late_events,
    totals_by_container_day,
    totals_by_container_hour,
)
from storage.orgs import create_org

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_EVENTS = 1_000_000
MAX_EVENTS = 10_000_000

# The org the latency and HTTP benchmarks read. It holds a fixed share of every database, so
# its size grows in proportion to N and "10k vs 10M" compares the same shape of data.
BENCH_ORG_ID = "bench"
BENCH_ORG_SHARE = 0.20
OTHER_ORGS = 49
# All orgs together log this many events per second: the time span grows with N
# (10k events cover ~17 minutes, 1M ~28 hours, 10M ~12 days), ending at load time.
EVENTS_PER_SECOND = 10
# Containers per org grow with the org's events; their popularity is Zipf-like, so a few
# containers take most of the traffic and a long tail sees a handful of events each.
EVENTS_PER_CONTAINER = 100
MIN_CONTAINERS = 20
CONTAINER_ZIPF_EXPONENT = 1.1
CONTAINER_KINDS = ("vault", "bucket", "secrets", "registry", "share", "db-snapshots", "kms")

# (event type, status, weight): mostly successful accesses, 10% failures overall.
MIX = (
    (EventType.ACCESS, EventStatus.SUCCESS, 66),
    (EventType.ACCESS, EventStatus.FAILURE, 7),
    (EventType.BLOCK, EventStatus.SUCCESS, 5),
    (EventType.CREATE, EventStatus.SUCCESS, 5),
    (EventType.EXPIRE, EventStatus.SUCCESS, 4),
    (EventType.UPDATE, EventStatus.SUCCESS, 7),
    (EventType.UPDATE, EventStatus.FAILURE, 2),
    (EventType.DELETE, EventStatus.SUCCESS, 3),
    (EventType.DELETE, EventStatus.FAILURE, 1),
)
ACTOR_SHARE = 0.4
DETAILS_SHARE = 0.6
# Clients report events a moment before the server receives them (up to 2 s), and a few
# arrive late (backfilled up to a day), so timestamps are not strictly in id order.
MAX_DELAY_US = 2_000_000
LATE_SHARE = 0.0005
MAX_LATE_US = 86_400_000_000

BATCH_SIZE = 50_000
HOUR_US = 3_600_000_000
# Tables filled without their secondary indexes, which are built once the rows are in.
BULK_INDEXED = (events, FINEST)
# storage.counts' other roll-ups, each the sum of a finer one over the key columns it lacks.
SUMMED_ROLL_UPS = (
    (totals_by_container_hour, FINEST),
    (counts_by_org_hour, FINEST),
    (counts_by_container, FINEST),
    (counts_by_org, counts_by_org_hour),
)
LATE_AFTER_US = int(windows.LATE_AFTER.total_seconds() * 1_000_000)
ZONE_SPANS_US = (windows.MINUTE * 1_000_000, windows.HOUR * 1_000_000)
# The app writes SQLite times as naive UTC text in SQLAlchemy's storage format.
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Manifest:
    """What the benchmarks need to know about a loaded database, kept beside it as JSON."""

    events: int
    seed: int
    load_seconds: float
    events_per_second: float
    org_id: str
    org_events: int
    span_start: str
    span_end: str
    busy_container: str
    busy_container_events: int
    tail_container: str
    tail_container_events: int
    schema: str

    @property
    def span(self) -> tuple[datetime, datetime]:
        """When the data starts and ends (event timestamps fall within about 2 s of it)."""
        return datetime.fromisoformat(self.span_start), datetime.fromisoformat(self.span_end)


def storage_dialect() -> Dialect:
    """The SQLite dialect as storage configures it (JSON serialiser included); connects nowhere."""
    return Database(f"sqlite:///{DATA_DIR / 'unused.db'}").engine.dialect


def schema_fingerprint() -> str:
    """A digest of the app's SQLite DDL and value formats: when storage changes either, a
    cached database no longer holds what the app would have written, so it is loaded again."""
    dialect = storage_dialect()
    statements = []
    for table in SQLModel.metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect))
            for index in sorted(table.indexes, key=lambda index: index.name or "")
        )
    serialise = events.c.details.type.dialect_impl(dialect).bind_processor(dialect)
    to_sqlite = events.c.timestamp.type.dialect_impl(dialect).bind_processor(dialect)
    assert serialise is not None and to_sqlite is not None
    statements += [serialise({"a": [1, "b"]}), str(to_sqlite(datetime(2000, 1, 2, tzinfo=UTC)))]
    return hashlib.sha256("\n".join(statements).encode()).hexdigest()[:16]


def default_database_path(event_count: int) -> Path:
    return DATA_DIR / f"events-{event_count}.db"


def manifest_path(database: Path) -> Path:
    return database.with_suffix(".json")


def key_path(database: Path) -> Path:
    return database.with_suffix(".key")


def read_manifest(database: Path) -> Manifest | None:
    """The manifest of a completely loaded database, or None when there is none."""
    path = manifest_path(database)
    if not database.exists() or not path.exists():
        return None
    try:
        return Manifest(**json.loads(path.read_text()))
    except TypeError:
        return None  # written by an older loader: load again


def org_ids() -> list[str]:
    return [BENCH_ORG_ID] + [f"org-{rank:03d}" for rank in range(1, OTHER_ORGS + 1)]


def org_shares() -> list[float]:
    # The other orgs are mildly skewed too: a few big tenants, many small ones.
    weights = [1 / rank**0.8 for rank in range(1, OTHER_ORGS + 1)]
    total = sum(weights)
    return [BENCH_ORG_SHARE] + [(1 - BENCH_ORG_SHARE) * weight / total for weight in weights]


def container_id(rank: int) -> str:
    return f"{CONTAINER_KINDS[rank % len(CONTAINER_KINDS)]}-{rank:06d}"


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    running, cumulative = 0.0, []
    for weight in weights:
        running += weight
        cumulative.append(running / total)
    cumulative[-1] = 1.0
    return cumulative


def _details_pool(rng: random.Random, dialect: Dialect) -> dict[EventType, list[str]]:
    """Serialised details objects per type, as storage's JSON column writes them."""

    def ip() -> str:
        return f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def obj() -> str:
        return f"{rng.choice(('reports', 'exports', 'db', 'img', 'keys'))}/{rng.randint(1, 9999)}"

    makers = {
        EventType.ACCESS: lambda: {"ip": ip(), "action": rng.choice(("read", "list"))},
        EventType.BLOCK: lambda: {"ip": ip(), "reason": rng.choice(("rate_limit", "geo"))},
        EventType.CREATE: lambda: {"object": obj(), "size_bytes": rng.randint(1, 10**8)},
        EventType.EXPIRE: lambda: {"object": obj(), "policy": "retention-30d"},
        EventType.UPDATE: lambda: {"field": rng.choice(("acl", "tags")), "ip": ip()},
        EventType.DELETE: lambda: {"object": obj(), "ip": ip()},
    }
    # The details column's own bind processor, with the JSON serialiser storage configures.
    serialise = events.c.details.type.dialect_impl(dialect).bind_processor(dialect)
    assert serialise is not None
    return {kind: [serialise(make()) for _ in range(500)] for kind, make in makers.items()}


def _check_time_text(time_text: "_TimeText", dialect: Dialect) -> None:
    """Fail loudly if storage no longer writes times the way the loader formats them."""
    to_sqlite = events.c.timestamp.type.dialect_impl(dialect).bind_processor(dialect)
    assert to_sqlite is not None
    for micros in (0, 1_700_000_000_123_456, 1_700_000_000_000_000):
        at = datetime.fromtimestamp(micros / 1_000_000, UTC).replace(microsecond=micros % 10**6)
        if to_sqlite(at) != time_text(micros):
            raise RuntimeError(f"storage stores {at} as {to_sqlite(at)!r}: update bench.load")


class _TimeText:
    """Formats microseconds since the epoch as storage's SQLite text, caching whole seconds."""

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        prefix = self._seconds.get(second)
        if prefix is None:
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            prefix = datetime.fromtimestamp(second, UTC).strftime(SQLITE_TIME_FORMAT)
            self._seconds[second] = prefix
        return f"{prefix}.{fraction:06d}"


@dataclass
class _Generated:
    """What the generator learned while producing rows: containers and the bench org's shape."""

    containers: dict[tuple[str, str], list[str]]  # (org, container) -> [created_at, last_event]
    bench_counts: list[int]
    # storage.windows' zones, (org, span seconds, zone start in µs) -> [min id, max id], and
    # its late events as (id, org, timestamp), exactly as log_events would record them.
    zones: dict[tuple[str, int, int], list[int]]
    late: list[tuple[int, str, str]]
    # storage.counts' finest roll-up per hour of event time, until no later event can fall in
    # that hour (`settled_counts`).
    counts: dict[int, dict[FineKey, int]]


class EventGenerator:
    """Deterministic rows for N events, oldest first, in the column order of `COLUMNS`."""

    COLUMNS = (
        "org_id",
        "container_id",
        "event_type",
        "status",
        "timestamp",
        "received_at",
        "actor",
        "details",
    )

    def __init__(self, event_count: int, *, seed: int, end: datetime, dialect: Dialect) -> None:
        self.event_count = event_count
        self.rng = random.Random(seed)
        self.orgs = org_ids()
        shares = org_shares()
        self.org_cumulative = _cumulative(shares)
        self.container_cumulative = []
        for share in shares:
            count = max(MIN_CONTAINERS, round(share * event_count / EVENTS_PER_CONTAINER))
            weights = [1 / rank**CONTAINER_ZIPF_EXPONENT for rank in range(1, count + 1)]
            self.container_cumulative.append(_cumulative(weights))
        self.container_names = [
            container_id(rank) for rank in range(len(self.container_cumulative[0]))
        ]
        self.kinds = [(kind.value, status.value) for kind, status, _ in MIX]
        self.kind_cumulative = _cumulative([weight for *_, weight in MIX])
        self.details = {kind.value: pool for kind, pool in _details_pool(self.rng, dialect).items()}
        self.actors = [f"user-{n:04d}@example.com" for n in range(300)] + [
            f"svc-{n:02d}@iam.example" for n in range(20)
        ]
        self.step_us = 1_000_000 // EVENTS_PER_SECOND
        self.start_us = int(end.timestamp() * 1_000_000) - event_count * self.step_us
        self.time_text = _TimeText()
        _check_time_text(self.time_text, dialect)
        _check_hours()
        self.generated = _Generated(
            containers={},
            bench_counts=[0] * len(self.container_names),
            zones={},
            late=[],
            counts={},
        )
        self.generated_until_us = self.start_us

    def batches(self, size: int = BATCH_SIZE) -> Iterator[list[tuple[str | None, ...]]]:
        for start in range(0, self.event_count, size):
            yield self._batch(start, min(size, self.event_count - start))

    def _batch(self, start: int, size: int) -> list[tuple[str | None, ...]]:
        # Locals instead of attribute look-ups: this loop runs once per event.
        rng_random = self.rng.random
        orgs, org_cumulative = self.orgs, self.org_cumulative
        container_cumulative, names = self.container_cumulative, self.container_names
        kinds, kind_cumulative = self.kinds, self.kind_cumulative
        details, actors, time_text = self.details, self.actors, self.time_text
        seen, bench_counts = self.generated.containers, self.generated.bench_counts
        zones, late = self.generated.zones, self.generated.late
        counts = self.generated.counts
        bisect_left, step_us, start_us = bisect.bisect_left, self.step_us, self.start_us
        rows: list[tuple[str | None, ...]] = []
        for index in range(start, start + size):
            org = bisect_left(org_cumulative, rng_random())
            rank = bisect_left(container_cumulative[org], rng_random())
            event_type, status = kinds[bisect_left(kind_cumulative, rng_random())]
            received_us = start_us + int((index + rng_random()) * step_us)
            delay = rng_random() ** 3 * MAX_DELAY_US
            if rng_random() < LATE_SHARE:
                delay = rng_random() * MAX_LATE_US
            timestamp_us = received_us - int(delay)
            timestamp = time_text(timestamp_us)
            hour = timestamp_us // HOUR_US
            received_at = time_text(received_us)
            org_id, container = orgs[org], names[rank]
            actor = None
            if event_type == "EXPIRE":
                actor = "system:lifecycle"
            elif event_type != "BLOCK" and rng_random() < ACTOR_SHARE:
                actor = actors[int(rng_random() * len(actors))]
            pool = details[event_type]
            detail = pool[int(rng_random() * len(pool))] if rng_random() < DETAILS_SHARE else "{}"
            rows.append(
                (org_id, container, event_type, status, timestamp, received_at, actor, detail)
            )
            # storage registers a container with the server clock of its first event and keeps
            # the latest event timestamp it has seen.
            known = seen.get((org_id, container))
            if known is None:
                seen[(org_id, container)] = [received_at, timestamp]
            elif timestamp > known[1]:
                known[1] = timestamp
            if org == 0:
                bench_counts[rank] += 1
            tally = counts.get(hour)
            if tally is None:
                tally = counts[hour] = {}
            key = (org_id, hour, container, event_type, status)
            tally[key] = tally.get(key, 0) + 1
            # Ids are given in generation order from 1, so the first id a zone sees is its least.
            event_id = index + 1
            if received_us - timestamp_us > LATE_AFTER_US:
                late.append((event_id, org_id, timestamp))
            else:
                for span_us in ZONE_SPANS_US:
                    key = (org_id, span_us, timestamp_us - timestamp_us % span_us)
                    bounds = zones.get(key)
                    if bounds is None:
                        zones[key] = [event_id, event_id]
                    else:
                        bounds[1] = event_id
        self.generated_until_us = start_us + (start + size) * step_us
        return rows

    def settled_counts(self, *, last: bool = False) -> Iterator[dict[FineKey, int]]:
        """Take the counts of each hour no event still to come can fall in (`last`: of all)."""
        earliest_to_come = self.generated_until_us - max(MAX_DELAY_US, MAX_LATE_US)
        counts = self.generated.counts
        for hour in sorted(counts):
            if last or (hour + 1) * HOUR_US <= earliest_to_come:
                yield counts.pop(hour)


def _check_hours() -> None:
    """Fail loudly if storage no longer keys its counts by the hour the loader computes."""
    for micros in (0, 1_700_000_000_123_456, 1_700_002_799_999_999, -1):
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
        if hour_of(at) != micros // HOUR_US:
            raise RuntimeError(f"storage counts {at} in hour {hour_of(at)}: update bench.load")


def _insert_finest(raw: sqlite3.Connection, hours: Iterable[Mapping[FineKey, int]]) -> None:
    """Settled hours of storage.counts' finest roll-up, in key order (appended, not sorted in)."""
    insert = _insert_sql(FINEST, [*key_columns(FINEST), "event_count"])
    for fine in hours:
        raw.executemany(insert, ((*key, count) for key, count in sorted(fine.items())))


def _sum_roll_ups(raw: sqlite3.Connection) -> None:
    """The other roll-ups, as the sums log_events would have kept (storage.counts.roll_up)."""
    for table, source in SUMMED_ROLL_UPS:
        key = [source.c[name] for name in key_columns(table)]
        summed = select(*key, func.sum(source.c.event_count)).group_by(*key)
        insert = table.insert().from_select([*key_columns(table), "event_count"], summed)
        raw.execute(str(insert.compile(dialect=sqlite.dialect())))
    _sum_days(raw)


def _sum_days(raw: sqlite3.Connection) -> None:
    """The containers' days: each hour's totals added to every day that holds it."""
    hourly = totals_by_container_hour
    # storage.counts.day_starts in SQL: SQLite's % keeps the sign, so floor it for any hour.
    last = hourly.c.hour - (hourly.c.hour % DAY_STEP + DAY_STEP) % DAY_STEP
    spread = union_all(
        *[
            select(
                hourly.c.org_id,
                (last - literal(back)).label("start_hour"),
                hourly.c.container_id,
                hourly.c.event_count,
            )
            for back in range(0, DAY_HOURS, DAY_STEP)
        ]
    ).subquery()
    key = [spread.c.org_id, spread.c.start_hour, spread.c.container_id]
    summed = select(*key, func.sum(spread.c.event_count)).group_by(*key)
    insert = totals_by_container_day.insert().from_select(
        [*key_columns(totals_by_container_day), "event_count"], summed
    )
    raw.execute(
        str(insert.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    )


def sqlite_path(database_url: str) -> Path:
    """The file behind a sqlite URL; other databases are refused."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise ValueError("bench.load loads SQLite files only: sqlite:///path/to/events.db")
    return Path(url.database)


async def _create_schema_and_orgs(database: Database, orgs: Sequence[str]) -> str:
    """The app's schema and one org (with an API key) per id; returns the bench org's key."""
    try:
        await database.create_schema()
        bench_key = ""
        for org_id in orgs:
            async with database.session() as session:
                _row, secret = await create_org(session, org_id=org_id)
            if org_id == BENCH_ORG_ID:
                bench_key = secret
        return bench_key
    finally:
        await database.dispose()


def _insert_sql(table: Table, columns: Sequence[str]) -> str:
    # Compiled from the table metadata, so the loader cannot drift from the schema.
    return str(table.insert().compile(dialect=sqlite.dialect(), column_keys=list(columns)))


def _bulk_insert(path: Path, generator: EventGenerator, *, analyze: bool, quiet: bool) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            # Safe only because a failed load is thrown away: no journal, no fsync.
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=MEMORY"):
                raw.execute(f"PRAGMA {pragma}")
            # Filling the table and then building each index costs about the same CPU as
            # keeping them up to date row by row, but the build can use a second thread.
            # The indexes are rebuilt from the metadata, so none is written by hand here.
            indexes = [index for table in BULK_INDEXED for index in table.indexes]
            for index in indexes:
                index.drop(connection)
            connection.commit()

            stage = time.perf_counter()
            insert_events = _insert_sql(events, EventGenerator.COLUMNS)
            with tqdm(
                total=generator.event_count, unit="ev", unit_scale=True, disable=quiet
            ) as progress:
                for rows in generator.batches():
                    raw.executemany(insert_events, rows)
                    _insert_finest(raw, generator.settled_counts())
                    progress.update(len(rows))
            _insert_finest(raw, generator.settled_counts(last=True))
            insert_containers = _insert_sql(
                containers, ("org_id", "id", "created_at", "last_event_at")
            )
            raw.executemany(
                insert_containers,
                (
                    (org_id, name, created_at, last_event_at)
                    for (org_id, name), (created_at, last_event_at) in sorted(
                        generator.generated.containers.items()
                    )
                ),
            )
            _insert_windows(raw, generator)
            raw.commit()
            stage = _stage(quiet, "rows inserted", stage)
            _sum_roll_ups(raw)
            raw.commit()
            stage = _stage(quiet, "counts summed", stage)

            # Measured: a 64 MB sort buffer with a helper thread builds these indexes faster
            # than one huge in-memory sort (SQLite only parallelises across sort runs).
            raw.execute("PRAGMA cache_size=-64000")
            raw.execute("PRAGMA threads=2")
            for index in indexes:
                index.create(connection)
            connection.commit()
            stage = _stage(quiet, f"{len(indexes)} indexes built", stage)
            if analyze:
                raw.execute("ANALYZE")
                raw.commit()
                _stage(quiet, "analyzed", stage)
            # The app's own setting, so the file is left as the gateway would leave it.
            raw.execute("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def _insert_windows(raw: sqlite3.Connection, generator: EventGenerator) -> None:
    """storage.windows' zones and late events for the generated rows."""
    last_id = raw.execute("SELECT max(id) FROM events").fetchone()[0]
    if last_id != generator.event_count:
        raise RuntimeError(f"expected ids 1..{generator.event_count}, the last is {last_id}")
    time_text = generator.time_text
    raw.executemany(
        _insert_sql(event_zones, ("org_id", "span_seconds", "start", "min_id", "max_id")),
        (
            (org_id, span_us // 1_000_000, time_text(start_us), lo, hi)
            for (org_id, span_us, start_us), (lo, hi) in generator.generated.zones.items()
        ),
    )
    raw.executemany(
        _insert_sql(late_events, ("id", "org_id", "timestamp")), generator.generated.late
    )


def _stage(quiet: bool, done: str, started: float) -> float:
    now = time.perf_counter()
    if not quiet:
        print(f"{done} in {now - started:.1f} s", file=sys.stderr, flush=True)
    return now


def load(
    path: Path,
    event_count: int,
    *,
    seed: int = 1,
    analyze: bool = True,
    replace: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Load `event_count` events into a new SQLite file at `path`; returns its manifest.

    The load goes to a temporary file renamed at the end, so an interrupted run never leaves
    a half-filled database that a benchmark would later take for a complete one.
    """
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists; pass --replace to load it again")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    database = Database(f"sqlite:///{partial}")
    bench_key = asyncio.run(_create_schema_and_orgs(database, org_ids()))
    end = datetime.now(UTC).replace(microsecond=0)
    generator = EventGenerator(event_count, seed=seed, end=end, dialect=database.engine.dialect)
    _bulk_insert(partial, generator, analyze=analyze, quiet=quiet)
    seconds = time.perf_counter() - started

    counts = generator.generated.bench_counts
    busy = max(range(len(counts)), key=lambda rank: counts[rank])
    # The least-used container that exists: a page of it is a seek that finds only a few rows.
    tail = min((rank for rank in range(len(counts)) if counts[rank]), key=lambda rank: counts[rank])
    manifest = Manifest(
        events=event_count,
        seed=seed,
        load_seconds=round(seconds, 2),
        events_per_second=round(event_count / seconds),
        org_id=BENCH_ORG_ID,
        org_events=sum(counts),
        span_start=(end - timedelta(seconds=event_count / EVENTS_PER_SECOND)).isoformat(),
        span_end=end.isoformat(),
        busy_container=container_id(busy),
        busy_container_events=counts[busy],
        tail_container=container_id(tail),
        tail_container_events=counts[tail],
        schema=schema_fingerprint(),
    )
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    os.replace(partial, path)
    key_file = key_path(path)
    key_file.unlink(missing_ok=True)
    # The key lets bench/http.py call the gateway as the bench org; never printed.
    key_file.touch(mode=0o600)
    key_file.write_text(bench_key + "\n")
    manifest_path(path).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def _event_count(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if not 1 <= value <= MAX_EVENTS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_EVENTS:,}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="Bulk-load a SQLite database with N realistic events for the benchmarks. "
        f"Org '{BENCH_ORG_ID}' holds {BENCH_ORG_SHARE:.0%} of them; its API key is written to "
        "<database>.key and a description of the data to <database>.json.",
    )
    parser.add_argument(
        "--events", type=_event_count, default=DEFAULT_EVENTS, help="default 1,000,000"
    )
    parser.add_argument(
        "--database-url",
        help="sqlite:///path.db (default: sqlite:///bench/data/events-N.db)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--replace", action="store_true", help="replace an existing database")
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip ANALYZE (to compare query plans without planner statistics)",
    )
    args = parser.parse_args(argv)
    try:
        path = (
            default_database_path(args.events)
            if args.database_url is None
            else sqlite_path(args.database_url)
        )
        manifest = load(
            path, args.events, seed=args.seed, analyze=not args.no_analyze, replace=args.replace
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    size = path.stat().st_size
    print(
        f"{manifest.events:,} events into {path} ({size / 2**20:,.0f} MiB) in "
        f"{manifest.load_seconds:.1f} s: {manifest.events_per_second:,} events/s"
    )
    print(f"org {manifest.org_id!r}: {manifest.org_events:,} events; key in {key_path(path)}")


if __name__ == "__main__":
    main()
