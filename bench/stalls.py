"""How long one heavy request holds the event loop, and so every other request of the process.

    python -m bench.stalls [--database-url postgresql+asyncpg://...] [--rounds 3]

The gateway app runs in this process (httpx's ASGI transport, no socket) on a new SQLite file
in a temporary directory, or on the given PostgreSQL database after dropping and creating its
schema, with one org and its key. Beside each request a probe task asks the event loop for
a turn every millisecond (PROBE_SECONDS), and records for every turn it gets:

- the loop thread's CPU time since its previous turn (`time.thread_time`): what the request
  ran on the loop without letting it turn, whatever else the machine is doing;
- the wall-clock time since its previous turn (1 ms at least): what another request would
  have waited, CPU contention from other processes included.

Printed per request kind, medians over --rounds: the request's wall time, and the longest loop
block in CPU and in wall time. The kinds are the largest inputs a client may send: batches of
10,000 events (small and 3 KiB details, JSON and NDJSON), GraphQL's logContainerEvents with
1,000, a 1,000-event page, the org's counts by container, type and status over years 1-9999,
and a page since the last hour of year 9999. Figures only: nothing asserts a time.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bench.subscriptions import prepare
from gateway.app import create_app
from gateway.config import Settings
from storage.database import Database

ORG_ID = "stalls"
BATCH = 10_000
GRAPHQL_BATCH = 1_000
WIDEST = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T00:00:00Z"}
LOG_EVENTS = """
mutation Log($orgId: ID!, $events: [NewContainerEventInput!]!) {
  logContainerEvents(orgId: $orgId, events: $events) { count }
}
"""


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    path: str
    body: bytes = b""
    content_type: str = "application/json"
    params: dict[str, str] | None = None


def _batch(details: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"container_id": f"vault-{index % 50}", "event_type": "ACCESS", "details": details}
        for index in range(BATCH)
    ]


def kinds() -> list[Kind]:
    events = f"/orgs/{ORG_ID}/events"
    small, large = _batch({"n": 1}), _batch({"blob": "x" * 3000})
    graphql_events = [
        {"containerId": f"vault-{index % 50}", "eventType": "ACCESS", "details": {"n": index}}
        for index in range(BATCH)
    ]

    def graphql(count: int) -> bytes:
        variables = {"orgId": ORG_ID, "events": graphql_events[:count]}
        return orjson.dumps({"query": LOG_EVENTS, "variables": variables})

    counts = f"/orgs/{ORG_ID}/events/counts"
    return [
        Kind("batch 10,000, small details", "POST", events, orjson.dumps(small)),
        Kind("batch 10,000, 3 KiB details", "POST", events, orjson.dumps(large)),
        Kind(
            "NDJSON 10,000, 3 KiB details",
            "POST",
            events,
            b"\n".join(orjson.dumps(item) for item in large),
            "application/x-ndjson",
        ),
        Kind("GraphQL logContainerEvents 1,000", "POST", "/graphql", graphql(GRAPHQL_BATCH)),
        Kind("GraphQL logContainerEvents 10,000", "POST", "/graphql", graphql(BATCH)),
        Kind("page of 1,000", "GET", events, params={"limit": "1000"}),
        Kind("counts by container, 1-9999", "GET", counts, params={"by": "container", **WIDEST}),
        Kind("counts by type, 1-9999", "GET", counts, params={"by": "type", **WIDEST}),
        Kind("counts by status, 1-9999", "GET", counts, params={"by": "status", **WIDEST}),
        Kind(
            "page since 9999-12-31T23:30Z", "GET", events, params={"since": "9999-12-31T23:30:00Z"}
        ),
    ]


# The probe asks for a turn every millisecond, as a stream of small requests would. It does not
# spin (sleep(0)): a loop that is never idle starves the database driver's worker threads of
# the GIL (each sqlite3 step waits out the 5 ms switch interval to get it back), and a 100-event
# batch took 5 s instead of 14 ms.
PROBE_SECONDS = 0.001


async def _probe(stop: asyncio.Event, cpu: list[float], wall: list[float]) -> None:
    last_cpu, last_wall = time.thread_time(), time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(PROBE_SECONDS)
        now_cpu, now_wall = time.thread_time(), time.perf_counter()
        cpu.append(now_cpu - last_cpu)
        wall.append(now_wall - last_wall)
        last_cpu, last_wall = now_cpu, now_wall


async def measure(client: httpx.AsyncClient, kind: Kind, key: str) -> tuple[float, float, float]:
    """One request: its wall time and the longest loop block, CPU and wall, in ms."""
    stop, cpu, wall = asyncio.Event(), [0.0], [0.0]
    probe = asyncio.create_task(_probe(stop, cpu, wall))
    await asyncio.sleep(0)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": kind.content_type}
    started = time.perf_counter()
    answer = await client.request(
        kind.method, kind.path, content=kind.body or None, params=kind.params, headers=headers
    )
    took = time.perf_counter() - started
    stop.set()
    await probe
    if answer.status_code != 200 or b'"errors"' in answer.content[:200]:
        raise RuntimeError(f"{kind.name}: {answer.status_code} {answer.text[:300]}")
    return took * 1000, max(cpu) * 1000, max(wall) * 1000


async def run(database_url: str, rounds: int) -> None:
    key = await prepare(database_url, ORG_ID)
    db = Database(database_url)
    app = create_app(Settings(database_url=database_url), db=db)
    transport = httpx.ASGITransport(app=app)
    print(f"{db.dialect}, {rounds} rounds, medians (ms)")
    print(f"{'request':36} {'wall':>8} {'block CPU':>10} {'block wall':>11}")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as client,
    ):
        for kind in kinds():
            figures = [await measure(client, kind, key) for _round in range(rounds)]
            took, cpu, wall = (statistics.median(column) for column in zip(*figures, strict=True))
            print(f"{kind.name:36} {took:8.1f} {cpu:10.1f} {wall:11.1f}")
    await db.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__)
    parser.add_argument("--database-url", help="PostgreSQL to use (its schema is recreated)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite+aiosqlite:///{folder}/stalls.db"
        asyncio.run(run(url, args.rounds))


if __name__ == "__main__":
    main()
