"""Bulk-load a SQLite (or PostgreSQL) database with N realistic events for the read benchmarks.

    python -m bench.load --events 1000000 [--database-url postgresql+asyncpg://...]

The schema (tables and indexes) comes from storage's own metadata. Logging millions of events
through the gateway's async write path would take hours, so the loader draws the events with
numpy a batch at a time and writes them with the synchronous sqlite3 driver, many rows to a
statement, then builds the events' indexes. Meanwhile a second process draws the same events
from the same seed and tallies what `storage.events.log_events` records beside each one: its
container, the windows' zones and late events (storage/windows.py) and the count roll-ups
(storage/counts.py), written to a side file that is copied in at the end. Every column holds
exactly what log_events would store.

On PostgreSQL (`--database-url postgresql+asyncpg://...`) the app's schema is dropped and
created afresh, one process tallies the events, then draws them again and COPYs them in with
asyncpg before building their indexes, and COPYs the tallied tables after them.
"""

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import asyncpg
import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Index, Table, create_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel
from tqdm import tqdm

from storage import windows
from storage.counts import DAY_HOURS, DAY_STEP, FINEST, ROLL_UPS, hour_of, key_columns
from storage.database import Database
from storage.domain import EventStatus, EventType
from storage.driver import asyncpg_dsn
from storage.models import (
    containers,
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

# (event type, status, weight): mostly successful accesses, 10% failures overall. Each filter
# holds at least 5% of events, so that even at 10k events the bench org (about 2,000 of them)
# fills a 100-event page of every filter, and bench.latency compares like pages across sizes.
MIX = (
    (EventType.ACCESS, EventStatus.SUCCESS, 64),
    (EventType.ACCESS, EventStatus.FAILURE, 7),
    (EventType.BLOCK, EventStatus.SUCCESS, 6),
    (EventType.CREATE, EventStatus.SUCCESS, 6),
    (EventType.EXPIRE, EventStatus.SUCCESS, 6),
    (EventType.UPDATE, EventStatus.SUCCESS, 6),
    (EventType.UPDATE, EventStatus.FAILURE, 2),
    (EventType.DELETE, EventStatus.SUCCESS, 2),
    (EventType.DELETE, EventStatus.FAILURE, 1),
)
ACTOR_SHARE = 0.4
DETAILS_SHARE = 0.6
DETAILS_PER_TYPE = 500
# Clients report events a moment before the server receives them (up to 2 s), and a few
# arrive late (backfilled up to a day), so timestamps are not strictly in id order.
MAX_DELAY_US = 2_000_000
LATE_SHARE = 0.0005
MAX_LATE_US = 86_400_000_000

BATCH_SIZE = 100_000
# Rows per INSERT statement. A statement's fixed cost (setting it up, resetting it, and
# AUTOINCREMENT's update of sqlite_sequence) is then paid once per hundred rows: measured, this
# halves the time to write the events compared with one row per statement.
ROWS_PER_INSERT = 100
SECOND_US = 1_000_000
HOUR_US = 3_600 * SECOND_US
LATE_AFTER_US = int(windows.LATE_AFTER.total_seconds() * SECOND_US)
# What log_events records beside the events, in the order they are written and copied.
RECORD_TABLES = (containers, event_zones, late_events, *ROLL_UPS)
ZONE_SPANS = (windows.MINUTE, windows.HOUR)

IntArray = npt.NDArray[np.int64]
ObjectArray = npt.NDArray[np.object_]
# Turns microseconds since the epoch into a column of times; None: SQLite's text (time_texts).
TimeFormat = Callable[[IntArray], ObjectArray] | None


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


def _cumulative(weights: Sequence[float] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cumulative shares ending at exactly 1.0, for np.searchsorted on uniform draws in [0, 1)."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    cumulative /= cumulative[-1]
    cumulative[-1] = 1.0
    return cumulative


def _draw(cumulative: npt.NDArray[np.float64], draws: npt.NDArray[np.float64]) -> IntArray:
    """The index each draw picks: the first whose cumulative share exceeds it."""
    return np.searchsorted(cumulative, draws, side="right").astype(np.int64)


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
    return {
        kind: [serialise(make()) for _ in range(DETAILS_PER_TYPE)] for kind, make in makers.items()
    }


def time_texts(micros: IntArray) -> ObjectArray:
    """Microseconds since the epoch as storage's SQLite text, "2024-01-02 03:04:05.678901"."""
    if not len(micros):
        return np.empty(0, dtype=object)
    seconds, fraction = np.divmod(micros, SECOND_US)
    # Formatting a date is the costly part, and about ten events share each second.
    unique, inverse = np.unique(seconds, return_inverse=True)
    prefixes = np.datetime_as_string(unique.astype("datetime64[s]"), unit="s").astype("U19")
    chars = np.empty((len(micros), 26), dtype=np.uint32)  # numpy's str: UCS-4 code points
    chars[:, :19] = prefixes.view(np.uint32).reshape(-1, 19)[inverse]
    chars[:, 10] = ord(" ")  # in place of ISO 8601's "T"
    chars[:, 19] = ord(".")
    for place in range(6):
        chars[:, 25 - place] = ord("0") + fraction // 10**place % 10
    return chars.view("U26").ravel().astype(object)


def _check_time_text(dialect: Dialect) -> None:
    """Fail loudly if storage no longer writes times the way the loader formats them."""
    to_sqlite = events.c.timestamp.type.dialect_impl(dialect).bind_processor(dialect)
    assert to_sqlite is not None
    samples = [0, 1_700_000_000_123_456, 1_700_000_000_000_000, 4_102_444_799_999_999]
    for micros, text in zip(samples, time_texts(np.array(samples)), strict=True):
        at = datetime.fromtimestamp(micros // SECOND_US, UTC).replace(microsecond=micros % 10**6)
        if to_sqlite(at) != text:
            raise RuntimeError(f"storage stores {at} as {to_sqlite(at)!r}: update bench.load")


def _check_hours() -> None:
    """Fail loudly if storage no longer keys its counts by the hour the loader computes."""
    for micros in (0, 1_700_000_000_123_456, 1_700_002_799_999_999, -1):
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
        if hour_of(at) != np.int64(micros) // HOUR_US:
            raise RuntimeError(f"storage counts {at} in hour {hour_of(at)}: update bench.load")


@dataclass(frozen=True)
class Batch:
    """Consecutive events as columns; the first has id `first_id`, the next first_id + 1, ..."""

    first_id: int
    org: IntArray  # index into org_ids()
    rank: IntArray  # the container's popularity rank in its org: container_id(rank)
    kind: IntArray  # index into MIX
    received_us: IntArray
    timestamp_us: IntArray
    actor: ObjectArray
    details: ObjectArray

    def __len__(self) -> int:
        return len(self.org)

    @property
    def ids(self) -> IntArray:
        return self.first_id + np.arange(len(self), dtype=np.int64)


class EventGenerator:
    """Deterministic events for a seed, oldest first, drawn a batch at a time."""

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
        self.seed, self.end = seed, end
        self.rng = np.random.default_rng(seed)
        self.org_names = np.array(org_ids(), dtype=object)
        shares = org_shares()
        self.org_cumulative = _cumulative(shares)
        self.containers_per_org = [
            max(MIN_CONTAINERS, round(share * event_count / EVENTS_PER_CONTAINER))
            for share in shares
        ]
        self.container_cumulative = [
            _cumulative(1 / np.arange(1, count + 1) ** CONTAINER_ZIPF_EXPONENT)
            for count in self.containers_per_org
        ]
        self.container_names = np.array(
            [container_id(rank) for rank in range(max(self.containers_per_org))], dtype=object
        )
        self.kind_cumulative = _cumulative([weight for *_, weight in MIX])
        self.type_names = np.array([kind.value for kind, _, _ in MIX], dtype=object)
        self.status_names = np.array([status.value for _, status, _ in MIX], dtype=object)
        self.without_actor = np.array([kind is EventType.BLOCK for kind, _, _ in MIX])
        self.lifecycle = np.array([kind is EventType.EXPIRE for kind, _, _ in MIX])
        pools = _details_pool(random.Random(seed), dialect)
        self.details = np.array([pools[kind] for kind, _, _ in MIX], dtype=object)
        self.actors = np.array(
            [f"user-{n:04d}@example.com" for n in range(300)]
            + [f"svc-{n:02d}@iam.example" for n in range(20)],
            dtype=object,
        )
        self.step_us = SECOND_US // EVENTS_PER_SECOND
        self.end_us = int(end.timestamp()) * SECOND_US + end.microsecond
        self.start_us = self.end_us - event_count * self.step_us
        _check_time_text(dialect)
        _check_hours()

    def batches(self, size: int = BATCH_SIZE) -> Iterator[Batch]:
        for start in range(0, self.event_count, size):
            yield self._batch(start, min(size, self.event_count - start))

    def _batch(self, start: int, size: int) -> Batch:
        rng = self.rng
        org = _draw(self.org_cumulative, rng.random(size))
        rank = np.empty(size, dtype=np.int64)
        draws = rng.random(size)
        for index, cumulative in enumerate(self.container_cumulative):
            chosen = org == index
            rank[chosen] = _draw(cumulative, draws[chosen])
        kind = _draw(self.kind_cumulative, rng.random(size))
        arrival = np.arange(start, start + size) + rng.random(size)
        received_us = self.start_us + (arrival * self.step_us).astype(np.int64)
        delay = rng.random(size) ** 3 * MAX_DELAY_US
        delay = np.where(rng.random(size) < LATE_SHARE, rng.random(size) * MAX_LATE_US, delay)
        timestamp_us = received_us - delay.astype(np.int64)
        actor = np.full(size, None, dtype=object)
        with_actor = rng.random(size) < ACTOR_SHARE
        actor[with_actor] = self.actors[rng.integers(len(self.actors), size=size)][with_actor]
        actor[self.without_actor[kind]] = None
        actor[self.lifecycle[kind]] = "system:lifecycle"
        details = np.where(
            rng.random(size) < DETAILS_SHARE,
            self.details[kind, rng.integers(DETAILS_PER_TYPE, size=size)],
            "{}",
        ).astype(object)
        return Batch(start + 1, org, rank, kind, received_us, timestamp_us, actor, details)

    def rows(self, batch: Batch, times: TimeFormat = None) -> dict[str, ObjectArray]:
        """The batch's events as the events table's columns, in the order of `COLUMNS`, times
        as `times` writes them (by default SQLite's text, `time_texts`)."""
        times = times or time_texts
        return {
            "org_id": self.org_names[batch.org],
            "container_id": self.container_names[batch.rank],
            "event_type": self.type_names[batch.kind],
            "status": self.status_names[batch.kind],
            "timestamp": times(batch.timestamp_us),
            "received_at": times(batch.received_us),
            "actor": batch.actor,
            "details": batch.details,
        }


class _Vocabulary:
    """A key column's values numbered in text order, so sorting numbers sorts the text."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = np.array(sorted(set(texts)), dtype=object)
        self.number = {text: number for number, text in enumerate(self.texts)}

    def numbers(self, texts: Sequence[str]) -> IntArray:
        return np.array([self.number[text] for text in texts], dtype=np.int64)


def _sum_by(keys: Sequence[IntArray], counts: IntArray) -> tuple[list[IntArray], IntArray]:
    """Counts added up per distinct key (a tuple of integer columns), in key order."""
    lows = [int(key.min()) for key in keys]
    shape = [int(key.max()) - low + 1 for key, low in zip(keys, lows, strict=True)]
    # One number per key, ordered as the keys are: sorting one array beats sorting by columns.
    codes = np.ravel_multi_index([key - low for key, low in zip(keys, lows, strict=True)], shape)
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    first = np.flatnonzero(np.diff(codes, prepend=-1))
    distinct = np.unravel_index(codes[first], shape)
    return (
        [key + low for key, low in zip(distinct, lows, strict=True)],
        np.add.reduceat(counts[order], first),
    )


class Tallies:
    """What log_events records beside the events, tallied batch by batch: each container's
    first arrival and latest timestamp, storage.windows' zones and late events, and
    storage.counts' finest roll-up."""

    def __init__(self, generator: EventGenerator, times: TimeFormat = None) -> None:
        self.generator = generator
        self.times = times or time_texts  # how the rows hold times (SQLite's text by default)
        orgs, ranks = len(generator.org_names), len(generator.container_names)
        self.events = np.zeros((orgs, ranks), dtype=np.int64)
        self.first_received = np.full((orgs, ranks), np.iinfo(np.int64).max)
        self.last_timestamp = np.full((orgs, ranks), np.iinfo(np.int64).min)
        # Every timestamp lies in [earliest, end]; the zones and hours are counted from there.
        self.earliest_us = generator.start_us - MAX_DELAY_US - MAX_LATE_US
        # Per span, the least and greatest id of each org's zones, numbered from the earliest.
        self.zones = {}
        for span in ZONE_SPANS:
            span_us = span * SECOND_US
            count = generator.end_us // span_us - self.earliest_us // span_us + 1
            self.zones[span] = (
                np.full((orgs, count), np.iinfo(np.int64).max),
                np.zeros((orgs, count), dtype=np.int64),
            )
        # (ids, orgs, timestamps, container ranks, kinds) of each batch's late events.
        self.late: list[tuple[IntArray, IntArray, IntArray, IntArray, IntArray]] = []
        # The finest roll-up's key (org, hour, container, type, status) as one number, each
        # column numbered in text order (hours from the earliest), so that the numbers sort as
        # the table's primary key does.
        self.first_hour = self.earliest_us // HOUR_US
        self.containers = _Vocabulary(list(generator.container_names))
        self.types = _Vocabulary(list(generator.type_names))
        self.statuses = _Vocabulary(list(generator.status_names))
        self.container_number = self.containers.numbers(list(generator.container_names))
        self.type_number = self.types.numbers(list(generator.type_names))
        self.status_number = self.statuses.numbers(list(generator.status_names))
        self.fine_shape = (
            orgs,
            generator.end_us // HOUR_US - self.first_hour + 1,
            len(self.containers.texts),
            len(self.types.texts),
            len(self.statuses.texts),
        )
        self.fine: list[tuple[IntArray, IntArray]] = []

    def _zone(self, micros: IntArray, span: int) -> IntArray:
        """The zones of `span` seconds these times fall in, numbered from the earliest."""
        span_us = span * SECOND_US
        return micros // span_us - self.earliest_us // span_us

    def add(self, batch: Batch) -> None:
        org, rank, ids = batch.org, batch.rank, batch.ids
        received_us, timestamp_us = batch.received_us, batch.timestamp_us
        # storage registers a container with the server clock of its first event and keeps the
        # latest event timestamp it has seen.
        np.add.at(self.events, (org, rank), 1)
        np.minimum.at(self.first_received, (org, rank), received_us)
        np.maximum.at(self.last_timestamp, (org, rank), timestamp_us)
        late = received_us - timestamp_us > LATE_AFTER_US  # storage.windows.is_late
        self.late.append((ids[late], org[late], timestamp_us[late], rank[late], batch.kind[late]))
        on_time = ~late
        for span, (lowest, highest) in self.zones.items():
            zone = (org[on_time], self._zone(timestamp_us[on_time], span))
            np.minimum.at(lowest, zone, ids[on_time])
            np.maximum.at(highest, zone, ids[on_time])
        key = (
            org,
            timestamp_us // HOUR_US - self.first_hour,
            self.container_number[rank],
            self.type_number[batch.kind],
            self.status_number[batch.kind],
        )
        self.fine.append(np.unique(np.ravel_multi_index(key, self.fine_shape), return_counts=True))

    def container_rows(self) -> dict[str, ObjectArray]:
        """The containers table, in key order."""
        by_name = np.argsort(self.container_number)  # the container ranks in name order
        seen = self.events[:, by_name] > 0
        org, position = np.nonzero(seen)
        rank = by_name[position]
        return {
            "org_id": self.generator.org_names[org],
            "id": self.generator.container_names[rank],
            "created_at": self.times(self.first_received[org, rank]),
            "last_event_at": self.times(self.last_timestamp[org, rank]),
        }

    def zone_rows(self) -> dict[str, ObjectArray]:
        """storage.windows' zones, in key order: org, span, start."""
        orgs, spans, starts, lowest_ids, highest_ids = [], [], [], [], []
        for span, (lowest, highest) in self.zones.items():
            org, zone = np.nonzero(highest)
            orgs.append(org)
            spans.append(np.full(len(org), span))
            span_us = span * SECOND_US
            starts.append((zone + self.earliest_us // span_us) * span_us)
            lowest_ids.append(lowest[org, zone])
            highest_ids.append(highest[org, zone])
        columns = [np.concatenate(parts) for parts in (orgs, spans, starts)]
        order = np.lexsort(columns[::-1])
        return {
            "org_id": self.generator.org_names[columns[0][order]],
            "span_seconds": columns[1][order].astype(object),
            "start": self.times(columns[2][order]),
            "min_id": np.concatenate(lowest_ids)[order].astype(object),
            "max_id": np.concatenate(highest_ids)[order].astype(object),
        }

    def late_rows(self) -> dict[str, ObjectArray]:
        """storage.windows' late events, in id order."""
        ids, org, timestamp_us, rank, kind = (
            np.concatenate(parts) for parts in zip(*self.late, strict=True)
        )
        return {
            "id": ids.astype(object),
            "org_id": self.generator.org_names[org],
            "timestamp": self.times(timestamp_us),
            "container_id": self.generator.container_names[rank],
            "event_type": self.generator.type_names[kind],
            "status": self.generator.status_names[kind],
        }

    def roll_up_rows(self) -> dict[Table, dict[str, ObjectArray]]:
        """Every roll-up table in key order, as storage.counts.roll_up sums the finest one."""
        [fine], counts = _sum_by(
            [np.concatenate([codes for codes, _ in self.fine])],
            np.concatenate([counts for _, counts in self.fine]),
        )
        org, hour, container, event_type, status = np.unravel_index(fine, self.fine_shape)
        columns = {
            "org_id": org,
            "hour": hour + self.first_hour,
            "container_id": container,
            "event_type": event_type,
            "status": status,
        }
        summed: dict[Table, tuple[dict[str, IntArray], IntArray]] = {}
        for table in ROLL_UPS:
            if table is totals_by_container_day:
                continue
            names = key_columns(table)
            keys, sums = _sum_by([columns[name] for name in names], counts)
            summed[table] = dict(zip(names, keys, strict=True)), sums
        # The containers' days: each hour's totals added to every day that holds it.
        hourly, hourly_counts = summed[totals_by_container_hour]
        last = hourly["hour"] - hourly["hour"] % DAY_STEP  # storage.counts.day_starts
        starts = [last - back for back in range(0, DAY_HOURS, DAY_STEP)]
        keys, sums = _sum_by(
            [
                np.tile(hourly["org_id"], len(starts)),
                np.concatenate(starts),
                np.tile(hourly["container_id"], len(starts)),
            ],
            np.tile(hourly_counts, len(starts)),
        )
        names = key_columns(totals_by_container_day)
        summed[totals_by_container_day] = dict(zip(names, keys, strict=True)), sums
        texts = {
            "org_id": self.generator.org_names,
            "container_id": self.containers.texts,
            "event_type": self.types.texts,
            "status": self.statuses.texts,
        }
        return {
            table: {
                **{
                    name: texts[name][key] if name in texts else key.astype(object)
                    for name, key in keys_by_name.items()
                },
                "event_count": sums.astype(object),
            }
            for table, (keys_by_name, sums) in summed.items()
        }

    def bench_container_events(self) -> IntArray:
        """The bench org's events per container rank."""
        return self.events[0]


def sqlite_path(database_url: str) -> Path:
    """The file behind a sqlite URL; other databases are refused."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise ValueError("not a SQLite file: sqlite:///path/to/events.db")
    return Path(url.database)


def is_postgres(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


def postgres_stand_in(database_url: str) -> Path:
    """Where a PostgreSQL database's manifest and key are kept (manifest_path and key_path of
    this path): a name in bench/data/ made of the host, port and database, never a file."""
    url = make_url(database_url)
    parts = (url.host or "localhost", str(url.port or 5432), url.database or "")
    return DATA_DIR / ("postgresql-" + "-".join(part.replace(".", "_") for part in parts) + ".pg")


def read_postgres_manifest(database_url: str) -> Manifest | None:
    """The manifest of a PostgreSQL database loaded by bench.load, or None when there is none
    or the database no longer holds those events (a benchmark that writes may have dropped
    the schema since)."""
    path = manifest_path(postgres_stand_in(database_url))
    if not path.exists():
        return None
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except TypeError:
        return None

    async def last_id() -> int | None:
        connection = await asyncpg.connect(_dsn(database_url))
        try:
            return await connection.fetchval("SELECT max(id) FROM events")
        except asyncpg.UndefinedTableError:
            return None
        finally:
            await connection.close()

    return manifest if asyncio.run(last_id()) == manifest.events else None


def _dsn(database_url: str) -> str:
    """asyncpg's form of a SQLAlchemy PostgreSQL URL."""
    return asyncpg_dsn(make_url(database_url))


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


@cache
def _insert_sql(table: Table, columns: tuple[str, ...], rows: int) -> str:
    """An INSERT of `rows` rows, compiled from the table metadata so it cannot drift from the
    schema: "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), ..."."""
    one = str(table.insert().compile(dialect=sqlite.dialect(), column_keys=list(columns)))
    head, values = one.split(" VALUES ")
    return f"{head} VALUES {', '.join([values] * rows)}"


def _insert(raw: sqlite3.Connection, table: Table, columns: Mapping[str, ObjectArray]) -> None:
    """Rows given as equally long columns of Python values, ROWS_PER_INSERT to a statement."""
    names = tuple(columns)
    width, count = len(names), len(columns[names[0]])
    whole = count - count % ROWS_PER_INSERT
    # Each statement's parameters are its rows one after the other: column i of row r is at
    # r * width + i. A leftover shorter statement takes the rows that do not fill one.
    for first, end, rows in ((0, whole, ROWS_PER_INSERT), (whole, count, count - whole)):
        if end == first:
            continue
        parameters = np.empty(((end - first) // rows, rows * width), dtype=object)
        for index, name in enumerate(names):
            parameters[:, index::width] = columns[name][first:end].reshape(-1, rows)
        raw.executemany(_insert_sql(table, names, rows), parameters.tolist())


def _write_records(
    path: Path, event_count: int, seed: int, end: datetime
) -> tuple[IntArray, float]:
    """Write what log_events records beside the events to a new SQLite file with the app's
    tables; returns the bench org's events per container rank and the seconds it took.

    Runs in a second process while the first writes the events and builds their indexes: it
    draws the same events from the same seed, so nothing has to pass between the two.
    """
    # The first process's work is the longer one, and this one's result is only needed at
    # the end: on a busy machine the first should get the CPU first.
    os.nice(5)
    started = time.perf_counter()
    generator = EventGenerator(event_count, seed=seed, end=end, dialect=storage_dialect())
    tallies = Tallies(generator)
    for batch in generator.batches():
        tallies.add(batch)
    engine = create_engine(f"sqlite:///{path}")
    try:
        SQLModel.metadata.create_all(engine, tables=RECORD_TABLES)
        with engine.connect() as connection:
            raw = _raw(connection)
            indexes = list(FINEST.indexes)
            for index in indexes:
                index.drop(connection)
            _insert(raw, containers, tallies.container_rows())
            _insert(raw, event_zones, tallies.zone_rows())
            _insert(raw, late_events, tallies.late_rows())
            for table, columns in tallies.roll_up_rows().items():
                _insert(raw, table, columns)
            raw.commit()
            _build(connection, indexes)
    finally:
        engine.dispose()
    return tallies.bench_container_events(), time.perf_counter() - started


def _raw(connection: Connection) -> sqlite3.Connection:
    """The driver's connection, set up for a bulk load."""
    raw = connection.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    # Safe only because a failed load is thrown away: no journal, no fsync.
    for pragma in ("journal_mode=OFF", "synchronous=OFF"):
        raw.execute(f"PRAGMA {pragma}")
    return raw


def _build(connection: Connection, indexes: Sequence[Index]) -> None:
    """Create the indexes (from the metadata, so none is written by hand here)."""
    # Measured: a small sort buffer (SQLite's default 2 MB cache) spilling sorted runs to
    # temporary files builds an index in about two thirds of the time one large in-memory sort
    # takes (its runs fit the CPU's caches). A helper thread (PRAGMA threads, which needs
    # temporary files, not temp_store=MEMORY) made the builds faster only on an idle machine
    # and slower on a busy one, so none is used.
    connection.exec_driver_sql("PRAGMA threads=0")
    for index in indexes:
        index.create(connection)
    connection.commit()


def _bulk_insert(
    path: Path, generator: EventGenerator, *, seed: int, end: datetime, analyze: bool, quiet: bool
) -> IntArray:
    """The events, their indexes, what log_events records beside them and the statistics;
    returns the bench org's events per container rank."""
    records = path.with_name(path.name + ".records")
    records.unlink(missing_ok=True)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no state is inherited
    engine = create_engine(f"sqlite:///{path}")
    try:
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            recording = pool.submit(_write_records, records, generator.event_count, seed, end)
            with engine.connect() as connection:
                raw = _raw(connection)
                # Measured: filling the table and then building each index takes half the
                # time of keeping the indexes up to date row by row.
                indexes = list(events.indexes)
                for index in indexes:
                    index.drop(connection)
                connection.commit()

                stage = time.perf_counter()
                generating = 0.0
                with tqdm(
                    total=generator.event_count, unit="ev", unit_scale=True, disable=quiet
                ) as progress:
                    drawn = time.perf_counter()
                    for batch in generator.batches():
                        rows = generator.rows(batch)
                        generating += time.perf_counter() - drawn
                        _insert(raw, events, rows)
                        progress.update(len(batch))
                        drawn = time.perf_counter()
                raw.commit()
                last_id = raw.execute("SELECT max(id) FROM events").fetchone()[0]
                if last_id != generator.event_count:
                    raise RuntimeError(f"expected ids 1..{generator.event_count}, not 1..{last_id}")
                stage = _stage(quiet, f"events inserted (drawn in {generating:.1f} s)", stage)
                _build(connection, indexes)
                stage = _stage(quiet, f"{len(indexes)} indexes built", stage)

                bench_counts, recorded = recording.result()
                stage = _stage(quiet, f"second process done ({recorded:.1f} s)", stage)
                # INSERT INTO t SELECT * FROM an identical table is SQLite's transfer
                # optimisation: records and index entries are copied, never sorted again.
                raw.execute("ATTACH DATABASE ? AS records", (str(records),))
                for table in RECORD_TABLES:
                    raw.execute(f"INSERT INTO main.{table.name} SELECT * FROM records.{table.name}")
                raw.commit()
                raw.execute("DETACH DATABASE records")
                stage = _stage(quiet, "containers, zones, late events and counts copied", stage)
                if analyze:
                    raw.execute("ANALYZE")
                    raw.commit()
                    _stage(quiet, "analyzed", stage)
                # The app's own setting, so the file is left as the gateway would leave it.
                raw.execute("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()
        records.unlink(missing_ok=True)
    return bench_counts


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
    counts = _bulk_insert(partial, generator, seed=seed, end=end, analyze=analyze, quiet=quiet)
    manifest = _manifest(counts, event_count, seed, end, time.perf_counter() - started)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    os.replace(partial, path)
    _write_key_and_manifest(path, bench_key, manifest)
    return manifest


def _manifest(
    counts: IntArray, event_count: int, seed: int, end: datetime, seconds: float
) -> Manifest:
    """The manifest of a load that took `seconds`, given the bench org's events per rank."""
    busy = int(np.argmax(counts))
    # The least-used container that exists: a page of it is a seek that finds only a few rows.
    used = np.flatnonzero(counts)
    tail = int(used[np.argmin(counts[used])])
    return Manifest(
        events=event_count,
        seed=seed,
        load_seconds=round(seconds, 2),
        events_per_second=round(event_count / seconds),
        org_id=BENCH_ORG_ID,
        org_events=int(counts.sum()),
        span_start=(end - timedelta(seconds=event_count / EVENTS_PER_SECOND)).isoformat(),
        span_end=end.isoformat(),
        busy_container=container_id(busy),
        busy_container_events=int(counts[busy]),
        tail_container=container_id(tail),
        tail_container_events=int(counts[tail]),
        schema=schema_fingerprint(),
    )


def _write_key_and_manifest(path: Path, bench_key: str, manifest: Manifest) -> None:
    key_file = key_path(path)
    key_file.unlink(missing_ok=True)
    # The key lets bench/http.py call the gateway as the bench org; never printed.
    key_file.touch(mode=0o600)
    key_file.write_text(bench_key + "\n")
    manifest_path(path).write_text(json.dumps(asdict(manifest), indent=2) + "\n")


# PostgreSQL's binary timestamps count microseconds from 2000-01-01 UTC.
POSTGRES_EPOCH_US = 946_684_800 * SECOND_US


def _micros(micros: IntArray) -> ObjectArray:
    """Times as Python ints, for the loading connection's timestamptz codec."""
    return micros.astype(object)


async def _copy(
    connection: asyncpg.Connection, table: Table, columns: Mapping[str, ObjectArray]
) -> None:
    await connection.copy_records_to_table(
        table.name, records=zip(*columns.values(), strict=True), columns=list(columns)
    )


async def _load_postgres(
    database_url: str, generator: EventGenerator, *, analyze: bool, quiet: bool
) -> IntArray:
    """COPY the events and what log_events records beside them into the schema just created;
    returns the bench org's events per container rank."""
    stage = time.perf_counter()
    tallies = Tallies(generator, times=_micros)
    for batch in generator.batches():
        tallies.add(batch)
    stage = _stage(quiet, "events tallied", stage)
    # The same events again from a fresh generator of the same seed (cheaper than keeping them).
    generator = EventGenerator(
        generator.event_count, seed=generator.seed, end=generator.end, dialect=storage_dialect()
    )
    connection = await asyncpg.connect(_dsn(database_url))
    try:
        # Times cross as microseconds: no datetime object is made per value.
        await connection.set_type_codec(
            "timestamptz",
            schema="pg_catalog",
            encoder=lambda micros: (micros - POSTGRES_EPOCH_US,),
            decoder=lambda value: value[0] + POSTGRES_EPOCH_US,
            format="tuple",
        )
        # Each index is one sort: in memory rather than in runs spilled to disk (default 64 MB).
        await connection.execute("SET maintenance_work_mem = '1GB'")
        dialect = postgresql.dialect()
        indexes = list(events.indexes)
        async with connection.transaction():
            # Filling the table and then building each index beats keeping them up to date.
            for index in indexes:
                await connection.execute(f"DROP INDEX {index.name}")
            await _copy(connection, containers, tallies.container_rows())
            with tqdm(
                total=generator.event_count, unit="ev", unit_scale=True, disable=quiet
            ) as progress:
                for batch in generator.batches():
                    rows = {"id": batch.ids.astype(object), **generator.rows(batch, _micros)}
                    await _copy(connection, events, rows)
                    progress.update(len(batch))
            await connection.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), $1)", generator.event_count
            )
            stage = _stage(quiet, "events copied", stage)
            for index in indexes:
                await connection.execute(str(CreateIndex(index).compile(dialect=dialect)))
            stage = _stage(quiet, f"{len(indexes)} indexes built", stage)
            await _copy(connection, event_zones, tallies.zone_rows())
            await _copy(connection, late_events, tallies.late_rows())
            for table, columns in tallies.roll_up_rows().items():
                await _copy(connection, table, columns)
            stage = _stage(quiet, "containers, zones, late events and counts copied", stage)
        if analyze:
            await connection.execute("ANALYZE")
            _stage(quiet, "analyzed", stage)
    finally:
        await connection.close()
    return tallies.bench_container_events()


def load_postgres(
    database_url: str,
    event_count: int,
    *,
    seed: int = 1,
    analyze: bool = True,
    replace: bool = False,
    quiet: bool = False,
) -> Manifest:
    """Drop the app's schema in a PostgreSQL database, create it afresh and load
    `event_count` events as `load` would; returns the manifest, kept in bench/data/."""
    stand_in = postgres_stand_in(database_url)
    if manifest_path(stand_in).exists() and not replace:
        raise FileExistsError(f"{database_url} was loaded before; pass --replace to load it again")
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # A load that fails half-way leaves no manifest, so no benchmark takes it for a whole one.
    manifest_path(stand_in).unlink(missing_ok=True)
    started = time.perf_counter()
    database = Database(database_url)
    asyncio.run(_drop_schema(database))
    database = Database(database_url)
    bench_key = asyncio.run(_create_schema_and_orgs(database, org_ids()))
    end = datetime.now(UTC).replace(microsecond=0)
    generator = EventGenerator(event_count, seed=seed, end=end, dialect=storage_dialect())
    counts = asyncio.run(_load_postgres(database_url, generator, analyze=analyze, quiet=quiet))
    manifest = _manifest(counts, event_count, seed, end, time.perf_counter() - started)
    _write_key_and_manifest(stand_in, bench_key, manifest)
    return manifest


async def _drop_schema(database: Database) -> None:
    try:
        await database.drop_schema()
    finally:
        await database.dispose()


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
        help="sqlite:///path.db (default: sqlite:///bench/data/events-N.db), or "
        "postgresql+asyncpg://... whose schema is dropped and created afresh",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--replace", action="store_true", help="replace an existing database")
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip ANALYZE (to compare query plans without planner statistics)",
    )
    args = parser.parse_args(argv)
    if args.database_url is not None and is_postgres(args.database_url):
        try:
            manifest = load_postgres(
                args.database_url,
                args.events,
                seed=args.seed,
                analyze=not args.no_analyze,
                replace=args.replace,
            )
        except FileExistsError as error:
            parser.error(str(error))
        stand_in = postgres_stand_in(args.database_url)
        print(
            f"{manifest.events:,} events into {make_url(args.database_url).render_as_string()} "
            f"in {manifest.load_seconds:.1f} s: {manifest.events_per_second:,} events/s"
        )
        print(
            f"org {manifest.org_id!r}: {manifest.org_events:,} events; key in {key_path(stand_in)}"
        )
        return
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
