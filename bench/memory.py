"""What subscriptions cost the server in memory, with a small and a large process-wide budget.

    python -m bench.memory [--orgs 10] [--events 5000] [--details-bytes 4096]
        [--budgets 16,1024] [--database-url postgresql+asyncpg://...]

For each budget (EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB, in MiB) the gateway runs under uvicorn
(one worker, 127.0.0.1) on a new SQLite file, or on the given PostgreSQL database after
dropping and creating its schema. One subscriber per org follows it over WebSocket from this
process (`queries/LiveContainerEvents.graphql`, after event 0), while batches of 500 events
with `--details-bytes` of details each are POSTed to the orgs in turn. Each org's tail holds
its newest events for its subscriber: what they hold together is what the budget caps.

Printed per budget: the largest `events_gateway_subscription_held_bytes` scraped from /metrics
while writing, the server's RSS before the subscribers came, its peak RSS (VmHWM), its RSS and
held bytes once the subscribers have left (CPython keeps freed memory for reuse, so RSS stays
near its peak), and whether every subscriber got every event of its org exactly once and in
order.
Loopback only, bounded: the wait for deliveries stops after --drain seconds. Figures only.
"""

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.http import Target, peak_rss_mib, serving
from storage.cursors import encode_event_cursor
from storage.database import Database
from storage.orgs import create_org

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIPTION = (ROOT / "queries" / "LiveContainerEvents.graphql").read_text()
BATCH = 500
GATEWAY = Target("gateway", "gateway.app:create_app", True, "/graphql")


async def prepare(url: str, orgs: int) -> dict[str, str]:
    """A new schema with the orgs; each one's API key."""
    database = Database(url)
    try:
        if database.dialect == "postgresql":
            await database.drop_schema()
        await database.create_schema()
        keys = {}
        async with database.session() as session:
            for number in range(orgs):
                org_id = f"org{number}"
                _row, keys[org_id] = await create_org(session, org_id=org_id)
        return keys
    finally:
        await database.dispose()


async def subscribe(
    url: str, org_id: str, key: str, *, after: str = encode_event_cursor(0)
) -> ClientConnection:
    """A graphql-transport-ws socket acknowledged and subscribed (id "1") to the org's events
    after the cursor `after`."""
    socket = await connect(url, subprotocols=["graphql-transport-ws"], compression=None)
    await socket.send(
        orjson.dumps({"type": "connection_init", "payload": {"X-API-Key": key}}).decode()
    )
    if orjson.loads(await socket.recv())["type"] != "connection_ack":
        raise RuntimeError(f"{org_id}: not acknowledged")
    variables = {"orgId": org_id, "after": after}
    payload = {"query": SUBSCRIPTION, "variables": variables}
    await socket.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
    return socket


async def receive(socket: ClientConnection, ids: list[int], expected: int) -> None:
    while len(ids) < expected:
        message = orjson.loads(await socket.recv())
        if message["type"] != "next":
            raise RuntimeError(f"unexpected message: {str(message)[:300]}")
        ids.append(int(message["payload"]["data"]["containerEvents"]["id"]))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def held_bytes(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("events_gateway_subscription_held_bytes "):
            return float(line.split()[1])
    return float("nan")


async def one_budget(url: str, budget: int, args: argparse.Namespace) -> None:
    keys = await prepare(url, args.orgs)
    env = {
        **os.environ,
        "EVENTS_GATEWAY_DATABASE_URL": url,
        "EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB": str(budget),
        "EVENTS_GATEWAY_LOG_LEVEL": "warning",
    }
    details = {"blob": "x" * args.details_bytes}
    with serving(GATEWAY, env) as (base, pid):
        socket_url = base.replace("http://", "ws://") + "/graphql"
        idle = rss_mib(pid)
        sockets = {org: await subscribe(socket_url, org, key) for org, key in keys.items()}
        received: dict[str, list[int]] = {org: [] for org in keys}
        readers = [
            asyncio.create_task(receive(sockets[org], received[org], args.events)) for org in keys
        ]
        written: dict[str, list[int]] = {org: [] for org in keys}
        most_held = 0.0
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            for start in range(0, args.events, BATCH):
                for org, key in keys.items():
                    batch = [
                        {"container_id": f"c{n % 20}", "event_type": "ACCESS", "details": details}
                        for n in range(start, min(start + BATCH, args.events))
                    ]
                    answer = await client.post(
                        f"/orgs/{org}/events", json=batch, headers={"X-API-Key": key}
                    )
                    answer.raise_for_status()
                    written[org] += [int(event_id) for event_id in answer.json()["ids"]]
                metrics = (await client.get("/metrics")).text
                most_held = max(most_held, held_bytes(metrics))
            _done, pending = await asyncio.wait(readers, timeout=args.drain)
            for task in pending:
                task.cancel()
            peak = peak_rss_mib(pid)
            for socket in sockets.values():
                await socket.close()
            await asyncio.sleep(2)
            left = rss_mib(pid)
            held_after = held_bytes((await client.get("/metrics")).text)
        complete = received == written
    print(
        f"{budget:>10} {most_held / 2**20:14.1f} {idle:9.1f} {peak:14.1f} {left:16.1f} "
        f"{held_after / 2**20:12.1f}  "
        f"{'every event once, in order' if complete else 'MISSING OR DOUBLED EVENTS'}"
    )


async def run(args: argparse.Namespace, url_for: dict[int, str]) -> None:
    print(
        f"{args.orgs} orgs x {args.events:,} events, {args.details_bytes:,} B details, "
        f"one subscriber each; {Database(next(iter(url_for.values()))).dialect}"
    )
    print(
        f"{'budget MiB':>10} {'held max MiB':>14} {'idle RSS':>9} {'peak RSS MiB':>14} "
        f"{'RSS after MiB':>16} {'held after':>12}"
    )
    for budget, url in url_for.items():
        started = time.perf_counter()
        await one_budget(url, budget, args)
        print(f"{'':>10} ({time.perf_counter() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--events", type=int, default=5_000, help="per org")
    parser.add_argument("--details-bytes", type=int, default=4_096)
    parser.add_argument("--budgets", default="16,1024", help="MiB, comma-separated")
    parser.add_argument("--drain", type=float, default=120.0)
    parser.add_argument("--database-url", help="PostgreSQL to use (its schema is recreated)")
    args = parser.parse_args(argv)
    budgets = [int(value) for value in args.budgets.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        url_for = {
            budget: args.database_url or f"sqlite+aiosqlite:///{folder}/memory-{budget}.db"
            for budget in budgets
        }
        asyncio.run(run(args, url_for))


if __name__ == "__main__":
    main()
