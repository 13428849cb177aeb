"""Soak: a fixed mix of reads and writes for a minute, watching errors, latency and memory.

    python -m bench.soak [--seconds 60] [--warm-up 10] [--clients 16]
                         [--database-url postgresql+asyncpg://...]

The gateway runs under uvicorn (one worker, 127.0.0.1) on a new SQLite file in a temporary
directory, or on the given PostgreSQL database after dropping and creating its schema there,
with one org and its API key and a seed of events over 20 containers. Then --clients
concurrent clients (asyncio tasks in one client process, one keep-alive connection each) send
requests back to back, each walking the same fixed cycle of ten kinds from its own place in it:
four REST page reads (the org's events, the five filter paths and a container's events, with
`container_id`, `since`/`until` and `order` in turn, each following its previous page's
`next_cursor` up to five pages deep), a single-event REST POST, a REST batch POST of 10 events,
two GraphQL queries (the query operations of queries/*.graphql in turn) and a
`logContainerEvent` mutation. First for --warm-up seconds, not counted, then for --seconds.

Beside them --subscribers WebSocket clients follow the whole org's live events
(`queries/LiveContainerEvents.graphql`) the way real ones do: each stays a few seconds
(seeded, 1-8 s), leaves, and subscribes again after the cursor of the last event it got (or
the cursor a SUBSCRIBER_TOO_SLOW end gave it). Once the load stops they catch up, and each
must have got every stored event of the org exactly once, in id order.

Printed: requests, errors (any non-2xx answer, a GraphQL answer with `errors`, or an exception;
with the first few messages) and p50/p99 latency per kind; the server's resident memory (VmRSS
from /proc, now, not the peak) after the warm-up, every 10 s and at the end, and its growth in
percent, beside what the subscription tails hold (`events_gateway_subscription_held_bytes`
from /metrics, capped by --subscription-memory-mb, EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB);
the subscribers' sessions and deliveries; the server's and the client's CPU over the measured
part; and whether every event whose write was acknowledged (warm-up and seed included) is
stored, by its id. Loopback only.
Figures only, but errors or a missing event make it exit non-zero.
"""

import argparse
import asyncio
import io
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlmodel import col, select
from websockets.exceptions import ConnectionClosed

from bench.http import Target, cpu_seconds, serving
from bench.memory import held_bytes, subscribe
from bench.subscriptions import prepare
from storage.cursors import encode_event_cursor
from storage.database import Database
from storage.models import Event

ROOT = Path(__file__).resolve().parent.parent
ORG_ID = "soak"
CONTAINERS = [f"vault-{number:02d}" for number in range(20)]
SEED_BATCHES, BATCH_SIZE = 20, 10
MAX_CURSOR_DEPTH = 5
REQUEST_TIMEOUT = 30.0
RSS_EVERY_SECONDS = 10.0
SHOWN_ERRORS = 3
STAY_SECONDS = (1.0, 8.0)  # how long a subscriber stays before it leaves, drawn per session
CATCH_UP_SECONDS = 60.0  # after the load, how long the subscribers may take to catch up

REST_READ, REST_POST, REST_BATCH = "REST read", "REST POST", "REST batch POST"
GRAPHQL_QUERY, GRAPHQL_MUTATION = "GraphQL query", "GraphQL logContainerEvent"
# The cycle every client walks, from its own place in it.
MIX = [
    REST_READ,
    GRAPHQL_QUERY,
    REST_POST,
    REST_READ,
    GRAPHQL_MUTATION,
    REST_READ,
    REST_BATCH,
    GRAPHQL_QUERY,
    REST_READ,
    REST_POST,
]
KINDS = [REST_READ, REST_POST, REST_BATCH, GRAPHQL_QUERY, GRAPHQL_MUTATION]
EVENT_TYPES = ["ACCESS", "BLOCK", "CREATE", "EXPIRE", "UPDATE", "DELETE"]


def read_paths() -> list[str]:
    """The REST lists the clients take turns reading, with the legacy spec's query parameters."""
    org = f"/orgs/{ORG_ID}"
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        f"{org}/events?limit=50",
        f"{org}/container_events/by_access?limit=20",
        f"{org}/container_events/by_block?limit=20&order=asc",
        f"{org}/container_events/by_create?limit=20&container_id={CONTAINERS[1]}",
        f"{org}/container_events/by_expire?limit=20&since={since}",
        f"{org}/container_events/by_fail?limit=20",
        f"{org}/containers/{CONTAINERS[0]}/events?limit=25",
        f"{org}/events?limit=100&container_id={CONTAINERS[2]}&order=asc",
        f"{org}/events?limit=20&since={since}&until=2100-01-01T00:00:00Z",
    ]


def graphql_operations() -> tuple[list[tuple[str, str]], str]:
    """The query operations of queries/ (name, document), and the logContainerEvent mutation."""
    queries, mutation = [], ""
    for path in sorted((ROOT / "queries").glob("*.graphql")):
        text = path.read_text()
        if path.stem == "LogContainerEvent":
            mutation = text
        elif "\nquery " in f"\n{text}":
            queries.append((path.stem, text))
    return queries, mutation


def query_variables(name: str, number: int) -> dict[str, Any]:
    variables: dict[str, Any] = {"orgId": ORG_ID}
    if name == "ContainerEvents":
        variables["containerId"] = CONTAINERS[number % len(CONTAINERS)]
    if name == "EventCounts":
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        variables["since"] = (now - timedelta(hours=24)).isoformat()
        variables["until"] = (now + timedelta(hours=1)).isoformat()
        variables["by"] = ["TYPE", "STATUS", "CONTAINER", "HOUR"][number % 4]
    return variables


def new_event(number: int) -> dict[str, Any]:
    return {
        "event_type": EVENT_TYPES[number % len(EVENT_TYPES)],
        "status": "FAILURE" if number % 10 == 0 else "SUCCESS",
        "actor": f"agent-{number % 7}",
        "details": {"attempt": number},
    }


@dataclass
class Tally:
    """What the clients saw, per kind, and the ids of every event the gateway acknowledged."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    acknowledged: set[int] = field(default_factory=set)

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        if len(self.messages[kind]) < SHOWN_ERRORS:
            self.messages[kind].append(message[:300])


class Client:
    """One connection's worth of load: walks MIX from `offset`, counting into `tally`."""

    def __init__(self, http: httpx.AsyncClient, offset: int, tally: Tally) -> None:
        self.http = http
        self.step = offset
        self.tally = tally
        self.paths = read_paths()
        self.queries, self.mutation = graphql_operations()
        self.cursors: dict[str, tuple[str, int]] = {}  # read path -> (next cursor, depth)

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            kind = MIX[self.step % len(MIX)]
            started = time.perf_counter()
            try:
                problem = await self.send(kind)
            except (httpx.HTTPError, ValueError) as error:
                problem = f"{type(error).__name__}: {error}"
            self.tally.latencies_ms[kind].append((time.perf_counter() - started) * 1000)
            if problem is not None:
                self.tally.error(kind, problem)
            self.step += 1

    async def send(self, kind: str) -> str | None:
        """Send one request of `kind`; what went wrong, or None."""
        number = self.step // len(MIX)
        if kind == REST_READ:
            return await self.read(self.paths[(self.step // 3) % len(self.paths)])
        if kind == REST_POST:
            container = CONTAINERS[self.step % len(CONTAINERS)]
            answer = await self.http.post(
                f"/orgs/{ORG_ID}/containers/{container}/events", json=new_event(self.step)
            )
            return self.acknowledge(answer, lambda body: [body["event"]["id"]])
        if kind == REST_BATCH:
            return await post_batch(self.http, self.step, self.tally)
        if kind == GRAPHQL_QUERY:
            name, document = self.queries[number % len(self.queries)]
            body = {"query": document, "variables": query_variables(name, number)}
            return graphql_problem(await self.http.post("/graphql", json=body))
        event = new_event(self.step)
        variables = {
            "orgId": ORG_ID,
            "containerId": CONTAINERS[self.step % len(CONTAINERS)],
            "event": {
                "eventType": event["event_type"],
                "status": event["status"],
                "actor": event["actor"],
                "details": event["details"],
            },
        }
        answer = await self.http.post(
            "/graphql", json={"query": self.mutation, "variables": variables}
        )
        problem = graphql_problem(answer)
        if problem is None:
            self.tally.acknowledged.add(
                int(answer.json()["data"]["logContainerEvent"]["event"]["id"])
            )
        return problem

    async def read(self, path: str) -> str | None:
        cursor, depth = self.cursors.pop(path, (None, 0))
        answer = await self.http.get(path, params={"cursor": cursor} if cursor else None)
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.text}"
        next_cursor = answer.json()["next_cursor"]
        if next_cursor is not None and depth + 1 < MAX_CURSOR_DEPTH:
            self.cursors[path] = (next_cursor, depth + 1)
        return None

    def acknowledge(self, answer: httpx.Response, ids: Any) -> str | None:
        if not answer.is_success:
            return f"{answer.status_code} {answer.text}"
        self.tally.acknowledged.update(ids(answer.json()))
        return None


async def post_batch(http: httpx.AsyncClient, number: int, tally: Tally) -> str | None:
    batch = [
        {"container_id": CONTAINERS[(number + index) % len(CONTAINERS)], **new_event(index)}
        for index in range(BATCH_SIZE)
    ]
    answer = await http.post(f"/orgs/{ORG_ID}/events", json=batch)
    if not answer.is_success:
        return f"{answer.status_code} {answer.text}"
    tally.acknowledged.update(answer.json()["ids"])
    return None


def graphql_problem(answer: httpx.Response) -> str | None:
    if not answer.is_success:
        return f"{answer.status_code} {answer.text}"
    errors = answer.json().get("errors")
    return f"GraphQL errors: {errors}" if errors else None


class Subscriber:
    """One subscriber of the whole org that keeps leaving and coming back after the last
    event it got, as a browser tab or a flaky network does."""

    def __init__(self, ws_url: str, key: str, number: int) -> None:
        self.ws_url, self.key = ws_url, key
        self.draw = random.Random(number)
        self.ids: list[int] = []
        self.after = encode_event_cursor(0)
        self.sessions = 0
        self.too_slow = 0
        self.errors: list[str] = []

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            stay = self.draw.uniform(*STAY_SECONDS)
            await self.session(min(until, time.monotonic() + stay))

    async def catch_up(self, last_id: int, deadline: float) -> None:
        """Subscribe again until the event `last_id` has arrived (or the deadline passed)."""
        while (not self.ids or self.ids[-1] < last_id) and time.monotonic() < deadline:
            await self.session(deadline, last_id)

    async def session(self, leave_at: float, last_id: int | None = None) -> None:
        self.sessions += 1
        try:
            socket = await subscribe(self.ws_url, ORG_ID, self.key, after=self.after)
        except (OSError, ConnectionClosed, RuntimeError) as error:
            self.errors.append(f"subscribe: {type(error).__name__}: {error}"[:300])
            return
        try:
            while (remaining := leave_at - time.monotonic()) > 0:
                if last_id is not None and self.ids and self.ids[-1] >= last_id:
                    return
                try:
                    raw = await asyncio.wait_for(socket.recv(), remaining)
                except TimeoutError:
                    return
                if not self.take(orjson.loads(raw)):
                    return
        except ConnectionClosed as error:
            self.errors.append(f"closed by the server: {error}"[:300])
        finally:
            await socket.close()

    def take(self, message: dict[str, Any]) -> bool:
        """Record one message; whether the subscription goes on."""
        payload = message.get("payload") or {}
        errors = payload.get("errors") if isinstance(payload, dict) else payload
        if message["type"] == "next" and not errors:
            event = payload["data"]["containerEvents"]
            self.ids.append(int(event["id"]))
            self.after = event["cursor"]
            return True
        extensions = (errors or [{}])[0].get("extensions") or {}
        if extensions.get("code") == "SUBSCRIBER_TOO_SLOW":
            self.too_slow += 1
            self.after = extensions["after"]
        else:
            self.errors.append(f"{message['type']}: {str(payload)[:300]}")
        return False

    def problems(self, stored: list[int]) -> str | None:
        """What this subscriber got wrong against the org's stored ids, or None."""
        got = set(self.ids)
        duplicated = len(self.ids) - len(got)
        disordered = sum(1 for a, b in zip(self.ids, self.ids[1:], strict=False) if b <= a)
        missing, extra = len(set(stored) - got), len(got - set(stored))
        if duplicated or disordered or missing or extra:
            return (
                f"{len(self.ids):,} received: {missing:,} missing, {duplicated:,} duplicated, "
                f"{disordered:,} out of order, {extra:,} not stored"
            )
        return None


def vm_rss_mib(pid: int) -> float:
    """The server's resident memory now (VmRSS), not its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def stored_ids(url: str) -> list[int]:
    """The ids of the org's stored events, in order."""
    database = Database(url)
    try:
        async with database.session() as session:
            found = await session.execute(
                select(col(Event.id)).where(Event.org_id == ORG_ID).order_by(col(Event.id))
            )
            return [event_id for event_id in found.scalars() if event_id is not None]
    finally:
        await database.dispose()


@dataclass
class Soak:
    tally: Tally
    rss_mib: list[tuple[float, float, float]]  # (seconds in, VmRSS, tails' held MiB)
    subscribers: list[Subscriber]
    server_cpu: float
    client_cpu: float
    seconds: float


async def sample(http: httpx.AsyncClient, pid: int, started: float) -> tuple[float, float, float]:
    """(seconds since `started`, the server's VmRSS MiB, what its subscription tails hold)."""
    metrics = (await http.get("/metrics")).text
    return (time.monotonic() - started, vm_rss_mib(pid), held_bytes(metrics) / 2**20)


async def soak(args: argparse.Namespace, base: str, key: str, pid: int) -> Soak:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    https = [
        httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {key}"},
            limits=limits,
            timeout=REQUEST_TIMEOUT,
        )
        for _ in range(args.clients)
    ]
    watcher = httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT)
    ws_url = base.replace("http://", "ws://", 1) + "/graphql"
    subscribers = [Subscriber(ws_url, key, number) for number in range(args.subscribers)]
    try:
        seed = Tally()
        for number in range(SEED_BATCHES):
            problem = await post_batch(https[0], number, seed)
            if problem is not None:
                raise RuntimeError(f"seeding failed: {problem}")
        warm_up = Tally()
        offsets = [number * len(MIX) // args.clients for number in range(args.clients)]
        until = time.monotonic() + args.warm_up + args.seconds
        following = asyncio.gather(*(subscriber.run(until) for subscriber in subscribers))
        warm_up_until = time.monotonic() + args.warm_up
        await asyncio.gather(
            *(
                Client(http, offset, warm_up).run(warm_up_until)
                for http, offset in zip(https, offsets, strict=True)
            )
        )
        measured = Tally()
        started = time.monotonic()
        server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
        rss = [await sample(watcher, pid, started)]
        until = started + args.seconds
        load = asyncio.gather(
            *(
                Client(http, offset, measured).run(until)
                for http, offset in zip(https, offsets, strict=True)
            )
        )
        while until - time.monotonic() > RSS_EVERY_SECONDS / 2:
            finished, _running = await asyncio.wait([load], timeout=RSS_EVERY_SECONDS)
            if finished:
                break
            rss.append(await sample(watcher, pid, started))
        await load
        rss.append(await sample(watcher, pid, started))
        elapsed = time.monotonic() - started
        server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
        measured.acknowledged |= seed.acknowledged | warm_up.acknowledged
        await following
        if subscribers and measured.acknowledged:
            deadline = time.monotonic() + CATCH_UP_SECONDS
            last_id = max(measured.acknowledged)
            await asyncio.gather(*(one.catch_up(last_id, deadline) for one in subscribers))
        return Soak(measured, rss, subscribers, server_cpu, client_cpu, elapsed)
    finally:
        for http in [*https, watcher]:
            await http.aclose()


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def report(run: Soak, stored: list[int]) -> bool:
    """Print the figures; whether the run was clean (no error, every acknowledged write stored)."""
    tally = run.tally
    print(f"{'kind':<27}{'requests':>10}{'req/s':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for kind in KINDS:
        latencies = sorted(tally.latencies_ms[kind])
        print(
            f"{kind:<27}{len(latencies):>10,}{len(latencies) / run.seconds:>9.1f}"
            f"{tally.errors[kind]:>8}{_percentile(latencies, 0.5):>9.1f}"
            f"{_percentile(latencies, 0.99):>9.1f}"
        )
    total = sum(len(latencies) for latencies in tally.latencies_ms.values())
    errors = sum(tally.errors.values())
    print(f"{'all':<27}{total:>10,}{total / run.seconds:>9.1f}{errors:>8}")
    for kind, messages in tally.messages.items():
        for message in messages:
            print(f"  error, {kind}: {message}")
    first, last = run.rss_mib[0][1], run.rss_mib[-1][1]
    series = ", ".join(f"{at:.0f} s {mib:.1f}" for at, mib, _held in run.rss_mib)
    print(f"server VmRSS MiB: {series}")
    held = ", ".join(f"{at:.0f} s {mib:.1f}" for at, _rss, mib in run.rss_mib)
    print(f"subscription tails hold MiB: {held}")
    print(
        f"server VmRSS after warm-up {first:.1f} MiB, at the end {last:.1f} MiB, "
        f"growth {100 * (last - first) / first:+.1f}%"
    )
    print(
        f"CPU over {run.seconds:.1f} s: server {run.server_cpu:.1f} s "
        f"({run.server_cpu / run.seconds:.2f} of a core, {1000 * run.server_cpu / total:.2f} ms "
        f"per request), client {run.client_cpu:.1f} s ({run.client_cpu / run.seconds:.2f})"
    )
    missing = tally.acknowledged - set(stored)
    print(
        f"acknowledged events {len(tally.acknowledged):,}, stored {len(stored):,}, "
        f"acknowledged but missing {len(missing):,}"
    )
    wrong = 0
    if run.subscribers:
        sessions = sum(one.sessions for one in run.subscribers)
        delivered = sum(len(one.ids) for one in run.subscribers)
        too_slow = sum(one.too_slow for one in run.subscribers)
        print(
            f"{len(run.subscribers)} subscribers: {sessions:,} sessions, {delivered:,} events "
            f"delivered, {too_slow} ended SUBSCRIBER_TOO_SLOW"
        )
        for number, one in enumerate(run.subscribers):
            problem = one.problems(stored)
            for message in one.errors[:SHOWN_ERRORS]:
                print(f"  subscriber {number}: {message}")
            if problem is not None or one.errors:
                wrong += 1
                print(f"  subscriber {number}: {problem or 'errors'}")
        print(
            f"subscribers with every stored event exactly once, in order: "
            f"{len(run.subscribers) - wrong} of {len(run.subscribers)}"
        )
    return errors == 0 and not missing and wrong == 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="how long to measure")
    parser.add_argument("--warm-up", type=float, default=10, help="load before measuring")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument(
        "--subscribers", type=int, default=4, help="reconnecting WebSocket subscribers"
    )
    parser.add_argument(
        "--subscription-memory-mb",
        type=int,
        help="EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB for the server (default: the gateway's)",
    )
    parser.add_argument(
        "--database-url", help="a PostgreSQL URL (its schema is dropped and created)"
    )
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    if args.seconds <= 0 or args.warm_up < 0 or args.clients < 1 or args.subscribers < 0:
        parser.error("--seconds must be > 0, --warm-up >= 0, --clients >= 1, --subscribers >= 0")
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as scratch:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(scratch) / 'events.db'}"
        key = asyncio.run(prepare(url, ORG_ID))
        env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": url}
        if args.subscription_memory_mb is not None:
            env["EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB"] = str(args.subscription_memory_mb)
        target = Target("gateway", "gateway.app:create_app", True, "/openapi.json")
        cap = env.get("EVENTS_GATEWAY_SUBSCRIPTION_MEMORY_MB", "64 (default)")
        with serving(target, env) as (base, pid):
            dialect = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
            print(
                f"{args.clients} clients, {args.subscribers} subscribers, {args.warm_up:g} s "
                f"warm-up then {args.seconds:g} s; {dialect}; uvicorn 1 worker, pid {pid}; "
                f"subscription memory cap {cap} MiB"
            )
            run = asyncio.run(soak(args, base, key, pid))
        clean = report(run, asyncio.run(stored_ids(url)))
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
