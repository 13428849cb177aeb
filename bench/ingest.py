"""Batch ingest over HTTP, against raw sqlite3 `executemany` into the same schema, in one run.

    python -m bench.ingest [--events 1000000] [--batch 10000]

The gateway runs under uvicorn (one worker, 127.0.0.1) on a new SQLite file, and one client
POSTs the events to `/orgs/{org_id}/events` in JSON batches, one after another; each answer
comes after its batch is committed, so events/s is what was durably stored. The baseline
inserts the same rows with Python's sqlite3 `executemany`, one transaction per batch, into a
second new file with the same tables, indexes and durability settings (WAL, synchronous=FULL),
but none of what the gateway keeps beside the events (containers, zones, counts).
Figures only; nothing asserts a time.
"""

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from bench.http import Target, serving
from storage.database import Database
from storage.models import events
from storage.orgs import create_org

ORG_ID = "ingest"
CONTAINERS = 200
# (event type, status, weight): mostly successful accesses, about 10% failures.
MIX: tuple[tuple[str, str, int], ...] = (
    ("ACCESS", "SUCCESS", 75),
    ("ACCESS", "FAILURE", 8),
    ("BLOCK", "SUCCESS", 5),
)
MIX += (("CREATE", "SUCCESS", 5), ("EXPIRE", "SUCCESS", 4), ("DELETE", "FAILURE", 3))


def make_events(count: int, seed: int = 1, *, backfill: bool = False) -> list[dict[str, object]]:
    """Events as a client sends them: stamped over the next minute, as agents report what just
    happened (the gateway receives them within storage.windows.LATE_AFTER of their time, if the
    run takes less than that); with `backfill`, one second apart ending now, as an import of
    past history (almost all of them late events, each also listed in late_events)."""
    rng = random.Random(seed)
    kinds = [(kind, status) for kind, status, weight in MIX for _ in range(weight)]
    now = datetime.now(UTC)
    start, step = (now - timedelta(seconds=count), 1.0) if backfill else (now, 60 / count)
    made: list[dict[str, object]] = []
    for index in range(count):
        kind, status = rng.choice(kinds)
        made.append(
            {
                "container_id": f"vault-{int(rng.paretovariate(1.2)) % CONTAINERS:03d}",
                "event_type": kind,
                "status": status,
                "timestamp": (start + timedelta(seconds=index * step)).isoformat(),
                "actor": f"user-{rng.randrange(300)}@example.com",
                "details": {"ip": f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"},
            }
        )
    return made


async def create_database(path: Path, org_id: str = ORG_ID) -> str:
    """A new database file with the gateway's schema and one org; the org's API key."""
    database = Database(f"sqlite:///{path}")
    try:
        await database.create_schema()
        async with database.session() as session:
            _row, key = await create_org(session, org_id=org_id)
        return key
    finally:
        await database.dispose()


def _gateway(path: Path, key: str, batches: Sequence[bytes]) -> tuple[float, list[float]]:
    """Seconds to POST every batch, and each batch's latency in ms."""
    env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{path}"}
    target = Target("gateway", "gateway.app:create_app", True, f"/orgs/{ORG_ID}/events")
    latencies = []
    with serving(target, env) as (base, _pid), httpx.Client(base_url=base, timeout=120) as client:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        started = time.perf_counter()
        for body in batches:
            sent = time.perf_counter()
            answer = client.post(target.path, content=body, headers=headers)
            latencies.append((time.perf_counter() - sent) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"batch refused: {answer.status_code} {answer.text[:300]}")
        return time.perf_counter() - started, latencies


def _raw_rows(batch: Sequence[dict[str, object]]) -> list[tuple[object, ...]]:
    """The rows the gateway would store, in SQLite's text formats."""
    received = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    rows: list[tuple[object, ...]] = []
    for item in batch:
        stamp = datetime.fromisoformat(str(item["timestamp"])).astimezone(UTC)
        rows.append(
            (
                ORG_ID,
                item["container_id"],
                item["event_type"],
                item["status"],
                stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),
                received,
                item["actor"],
                json.dumps(item["details"], separators=(",", ":")),
            )
        )
    return rows


def _raw_executemany(path: Path, batches: Sequence[list[tuple[object, ...]]]) -> float:
    """Seconds to insert every batch with executemany, one committed transaction each."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        events.metadata.create_all(connection)
    engine.dispose()
    columns = ", ".join(events.c.keys()[1:])
    insert = f"INSERT INTO events ({columns}) VALUES ({', '.join('?' * 8)})"
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        # The foreign keys would need containers and an org; the gateway checks them too,
        # which is part of what it is measured doing.
        started = time.perf_counter()
        for rows in batches:
            raw.execute("BEGIN")
            raw.executemany(insert, rows)
            raw.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        raw.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events per POST (<= 10,000)")
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="stamp the events one second apart ending now (an import of history) instead of "
        "over the coming minute (live agents)",
    )
    args = parser.parse_args(argv)
    made = make_events(args.events, backfill=args.backfill)
    chunks = [made[start : start + args.batch] for start in range(0, len(made), args.batch)]
    bodies = [json.dumps(chunk).encode() for chunk in chunks]
    raw_batches = [_raw_rows(chunk) for chunk in chunks]
    print(
        f"{args.events:,} events in {len(chunks)} batches of {args.batch:,} "
        f"({sum(map(len, bodies)) / len(bodies) / 2**20:.2f} MiB of JSON each), stamped "
        + ("one second apart ending now (backfill)" if args.backfill else "over the next minute"),
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as scratch:
        gateway_db, raw_db = Path(scratch) / "gateway.db", Path(scratch) / "raw.db"
        key = asyncio.run(create_database(gateway_db))
        gateway_seconds, latencies = _gateway(gateway_db, key, bodies)
        with sqlite3.connect(gateway_db) as check:
            stored = check.execute("SELECT count(*) FROM events").fetchone()[0]
        raw_seconds = _raw_executemany(raw_db, raw_batches)
    if stored != args.events:
        raise RuntimeError(f"the gateway stored {stored:,} events, not {args.events:,}")
    gateway_rate, raw_rate = args.events / gateway_seconds, args.events / raw_seconds
    ordered = sorted(latencies)
    print(f"{'target':40} {'events/s':>10} {'seconds':>8}")
    print(f"{'raw sqlite3 executemany, same schema':40} {raw_rate:10,.0f} {raw_seconds:8.1f}")
    print(f"{'gateway batch POST over HTTP':40} {gateway_rate:10,.0f} {gateway_seconds:8.1f}")
    print(
        f"\nbatch latency p50 {statistics.median(latencies):.0f} ms, "
        f"p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]:.0f} ms; "
        f"gateway / raw {gateway_rate / raw_rate:.2f} (target >= 0.60); "
        f"{stored:,} events stored, each exactly once"
    )


if __name__ == "__main__":
    main()
