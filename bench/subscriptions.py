"""Subscription delivery latency: from an event's commit to a subscribed client, under load.

    python -m bench.subscriptions [--subscribers 100] [--rate 1000] [--seconds 20]
        [--containers K] [--receivers 2] [--database-url postgresql+asyncpg://...]

The gateway runs under uvicorn (one worker, 127.0.0.1) on a new SQLite file, or on the given
PostgreSQL database after dropping and creating its schema there. N clients subscribe over
WebSocket (graphql-transport-ws, the key in connection_init) to `containerEvents` of one org:
all to the whole org, or with --containers K each to one of K containers (the writer then
spreads its events over those K). The clients run in --receivers processes of their own, so
the client side is not one Python process; the writer is an asyncio task in the parent, which
POSTs small batches to `/orgs/{org_id}/events` on a steady 20 ms clock (each tick sends what
the rate owes so far, so a slow answer makes the next batch larger rather than the rate lower).

Every subscriber starts after event 0 (a cursor), so none can miss an event by subscribing late;
a warm-up batch, one event per container, has reached every subscriber before the measured
writing starts. Per delivered event, on the one machine's wall clock: commit to client, the
client's time when its message is read minus the time the server's commit returned (noted by a
hook on the event writer's commits that bench.commit_clock adds to the app, the hook the
subscriptions' broker hears commits by); as an upper bound, the same minus the event's
`receivedAt`, stamped in the transaction before its statements and commit; and, as a lower
bound, minus when the writer got the answer of the POST that stored the event (answered after
the commit, over HTTP). Printed: p50, p99 and max of those,
deliveries/s, events written, whether every subscriber got every event it should exactly once
and in order, the server's CPU (all threads, from /proc) and peak RSS, and the receivers' CPU.
Loopback only, bounded in time (the drain after writing stops when everything arrived, when
nothing arrives for --stall seconds, or after --drain seconds). Figures only.
"""

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.http import FIELDS, Target, cpu_seconds, peak_rss_mib, serving
from storage.cursors import encode_event_cursor
from storage.database import Database
from storage.orgs import create_org

ORG_ID = "live"
WHOLE_ORG_CONTAINERS = 50  # what the writer cycles over when subscribers take the whole org
TICK_SECONDS = 0.02
MAX_BATCH = 10_000  # the batch endpoint's limit
POST_TIMEOUT = 30.0
PROGRESS_SECONDS = 0.25
PROTOCOL = Subprotocol("graphql-transport-ws")
CONNECT_TIMEOUT = 30.0
SUBSCRIPTION = (
    "subscription Live($orgId: ID!, $containerId: ID, $after: String) {"
    " containerEvents(orgId: $orgId, containerId: $containerId, after: $after)"
    f" {{ {FIELDS} }} }}"  # the eight fields bench.http reads: a dashboard's row
)


def container_name(number: int) -> str:
    return f"vault-{number:03d}"


async def prepare(url: str, org_id: str = ORG_ID) -> str:
    """A new schema with one org (PostgreSQL: dropped first); the org's API key."""
    database = Database(url)
    try:
        if database.dialect == "postgresql":
            await database.drop_schema()
        await database.create_schema()
        async with database.session() as session:
            _row, key = await create_org(session, org_id=org_id)
        return key
    finally:
        await database.dispose()


# The receivers: each process holds some of the subscriptions in one event loop.


@dataclass
class Received:
    """What one subscription received: ids in arrival order, with each one's arrival time and
    its latency in ms (arrival minus receivedAt)."""

    number: int
    container_id: str | None
    ids: array = field(default_factory=lambda: array("q"))
    latencies_ms: array = field(default_factory=lambda: array("d"))
    arrived: array = field(default_factory=lambda: array("d"))  # time.time() of each
    last_at: float = 0.0  # time.time() of the last delivery
    errors: list[str] = field(default_factory=list)


async def _subscribe(url: str, key: str, received: Received) -> ClientConnection:
    # No permessage-deflate: it would cost both ends CPU that this bench is not about.
    socket = await connect(url, subprotocols=[PROTOCOL], compression=None)
    await socket.send(
        orjson.dumps({"type": "connection_init", "payload": {"X-API-Key": key}}).decode()
    )
    while (message := orjson.loads(await socket.recv()))["type"] == "ping":
        await socket.send('{"type":"pong"}')
    if message["type"] != "connection_ack":
        raise RuntimeError(f"not acknowledged: {message}")
    variables: dict[str, Any] = {"orgId": ORG_ID, "after": encode_event_cursor(0)}
    if received.container_id is not None:
        variables["containerId"] = received.container_id
    payload = {"query": SUBSCRIPTION, "variables": variables}
    await socket.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
    return socket


async def _follow(socket: ClientConnection, received: Received, counter: list[int]) -> None:
    ids, latencies, arrived = received.ids, received.latencies_ms, received.arrived
    parse_time = datetime.fromisoformat
    async for raw in socket:
        now = time.time()
        message = orjson.loads(raw)
        kind = message["type"]
        if kind == "next":
            payload = message["payload"]
            if "errors" in payload:
                received.errors.append(str(payload["errors"])[:300])
                continue
            event = payload["data"]["containerEvents"]
            ids.append(int(event["id"]))
            latencies.append((now - parse_time(event["receivedAt"]).timestamp()) * 1000)
            arrived.append(now)
            received.last_at = now
            counter[0] += 1
        elif kind == "ping":
            await socket.send('{"type":"pong"}')
        else:
            received.errors.append(str(message)[:300])
            if kind in ("error", "complete"):
                return


async def _receive(url: str, key: str, assigned: list[tuple[int, str | None]], pipe: Connection):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def told() -> None:
        if pipe.recv() == "stop":
            stop.set()

    loop.add_reader(pipe.fileno(), told)
    everyone = [Received(number, container_id) for number, container_id in assigned]
    opening = asyncio.Semaphore(20)

    async def open_one(received: Received) -> ClientConnection:
        async with opening:
            return await _subscribe(url, key, received)

    sockets = await asyncio.wait_for(
        asyncio.gather(*(open_one(received) for received in everyone)), CONNECT_TIMEOUT
    )
    counter = [0]
    followers = [
        asyncio.create_task(_follow(socket, received, counter))
        for socket, received in zip(sockets, everyone, strict=True)
    ]
    pipe.send(("ready", 0))
    cpu_before, wall_before = time.process_time(), time.monotonic()
    while not stop.is_set():
        pipe.send(("progress", counter[0]))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_SECONDS)
    cpu, wall = time.process_time() - cpu_before, time.monotonic() - wall_before
    for follower in followers:
        follower.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    loop.remove_reader(pipe.fileno())
    os.set_blocking(pipe.fileno(), True)  # the loop made it non-blocking; the results are large
    return everyone, cpu, wall


def receiver_main(url: str, key: str, assigned: list[tuple[int, str | None]], pipe: Connection):
    """A receiver process: subscribe, report progress until told to stop, send what arrived."""
    import uvloop  # noqa: PLC0415 (the receivers' loop only)

    try:
        everyone, cpu, wall = uvloop.run(_receive(url, key, assigned, pipe))
    except Exception as error:  # the parent must hear of it rather than wait
        pipe.send(("failed", repr(error)))
        raise
    pipe.send(("done", ([vars(received) for received in everyone], cpu, wall)))


# The writer, and the parent that watches the receivers.


@dataclass
class Written:
    """The events the writer stored, in order: ids, containers, when each was answered."""

    ids: list[int] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)  # time.time() of each event's answer
    started: float = 0.0  # time.time() when the measured writing started
    seconds: float = 0.0
    stalled: bool = False  # a POST went unanswered for POST_TIMEOUT: writing stopped there


async def _post(
    http: httpx.AsyncClient, key: str, containers: Sequence[str], written: Written
) -> None:
    body = orjson.dumps(
        [{"container_id": name, "event_type": "ACCESS", "actor": "bench"} for name in containers]
    )
    sent = time.perf_counter()
    answer = await http.post(
        f"/orgs/{ORG_ID}/events",
        content=body,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    written.post_ms.append((time.perf_counter() - sent) * 1000)
    answered = time.time()
    if answer.status_code != 200:
        raise RuntimeError(f"batch refused: {answer.status_code} {answer.text[:300]}")
    written.ids += [int(event_id) for event_id in answer.json()["ids"]]
    written.containers += containers
    written.answered += [answered] * len(containers)


async def write_steadily(
    http: httpx.AsyncClient, key: str, containers: Sequence[str], rate: int, seconds: float
) -> Written:
    """POST what `rate` owes at every tick, one batch at a time, until `seconds` have passed
    (a server that answers slowly gets larger batches, and fewer events if it cannot keep up)."""
    written = Written(started=time.time())
    start = time.monotonic()
    sent = ticks = 0
    shown = 0.0
    while (elapsed := time.monotonic() - start) < seconds:
        if elapsed - shown >= 5:
            print(f"  {elapsed:4.1f} s: {sent:,} events written", file=sys.stderr)
            shown = elapsed
        owed = min(int(rate * elapsed) - sent, MAX_BATCH)
        if owed > 0:
            batch = [containers[(sent + n) % len(containers)] for n in range(owed)]
            try:
                await _post(http, key, batch, written)
            except httpx.TimeoutException:
                written.stalled = True  # a starved server: the figures say so
                break
            sent += owed
        ticks += 1
        await asyncio.sleep(max(0.0, start + ticks * TICK_SECONDS - time.monotonic()))
    written.seconds = time.monotonic() - start
    return written


class Receivers:
    """The receiver processes' pipes; keeps the latest progress count of each."""

    def __init__(self, pipes: list[Connection]) -> None:
        self.pipes = pipes
        self.counts = [0] * len(pipes)
        self.results: list[Any] = [None] * len(pipes)
        self.ready = 0
        self.failure: str | None = None
        self.changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number, pipe in enumerate(pipes):
            loop.add_reader(pipe.fileno(), self._read, number)

    def _read(self, number: int) -> None:
        pipe = self.pipes[number]
        try:
            kind, value = pipe.recv()
        except EOFError:
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            self.failure = self.failure or f"receiver {number} exited"
            kind, value = "eof", None
        if kind == "progress":
            self.counts[number] = value
        elif kind == "ready":
            self.ready += 1
        elif kind == "done":
            self.results[number] = value
            asyncio.get_running_loop().remove_reader(pipe.fileno())
        elif kind == "failed":
            self.failure = f"receiver {number} failed: {value}"
        self.changed.set()

    @property
    def delivered(self) -> int:
        return sum(self.counts)

    async def until(self, done: Any, timeout: float, stall: float | None = None) -> bool:
        """Wait until done() is true (True), or the timeout or a stall passes (False)."""
        deadline = time.monotonic() + timeout
        last, last_change = self.delivered, time.monotonic()
        while not done():
            if self.failure:
                raise RuntimeError(self.failure)
            now = time.monotonic()
            if now > deadline or (stall is not None and now - last_change > stall):
                return False
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)
            if self.delivered != last:
                last, last_change = self.delivered, time.monotonic()
        return True

    async def collect(self) -> list[Any]:
        for pipe in self.pipes:
            pipe.send("stop")
        if not await self.until(lambda: all(r is not None for r in self.results), 60):
            raise RuntimeError("the receivers did not report back")
        return self.results


@dataclass
class Run:
    written: Written
    warm_up: Written
    received: list[dict[str, Any]]
    receiver_cpu: list[tuple[float, float]]  # (CPU seconds, wall seconds) per process
    server_cpu_seconds: float
    server_rss_mib: float
    drain_seconds: float
    drained: bool
    committed_at: dict[int, float]  # event id: the server's time.time() when its commit returned


async def _drive(args: argparse.Namespace, base: str, server_pid: int, pipes: list[Connection]):
    receivers = Receivers(pipes)
    if not await receivers.until(lambda: receivers.ready == len(pipes), CONNECT_TIMEOUT + 10):
        raise RuntimeError("the subscribers did not connect")
    containers = [container_name(n) for n in range(args.containers or WHOLE_ORG_CONTAINERS)]
    subscribers_of = _subscribers_per_container(args)
    async with httpx.AsyncClient(base_url=base, timeout=POST_TIMEOUT) as http:
        warm_up = Written()
        await _post(http, args.key, containers, warm_up)
        expected = sum(subscribers_of(name) for name in containers)
        if not await receivers.until(lambda: receivers.delivered >= expected, 30):
            raise RuntimeError(
                f"the warm-up did not reach every subscriber ({receivers.delivered})"
            )
        cpu_before = cpu_seconds(server_pid)
        print("subscribers live; writing", file=sys.stderr)
        written = await write_steadily(http, args.key, containers, args.rate, args.seconds)
    # What every subscriber should get: all events, or its container's.
    total = expected + sum(subscribers_of(name) for name in written.containers)
    print(f"written {len(written.ids):,} events; draining", file=sys.stderr)
    drain_start = time.monotonic()
    drained = await receivers.until(
        lambda: receivers.delivered >= total, args.drain, stall=args.stall
    )
    drain_seconds = time.monotonic() - drain_start
    server_cpu = cpu_seconds(server_pid) - cpu_before
    rss = peak_rss_mib(server_pid)
    async with httpx.AsyncClient(base_url=base, timeout=POST_TIMEOUT) as http:
        commits = (await http.get("/_bench/commits")).raise_for_status().json()
    committed_at = dict(zip(commits["ids"], commits["times"], strict=True))
    results = await receivers.collect()
    received = [item for everyone, _cpu, _wall in results for item in everyone]
    cpu = [(cpu, wall) for _everyone, cpu, wall in results]
    return Run(
        written, warm_up, received, cpu, server_cpu, rss, drain_seconds, drained, committed_at
    )


def _subscribers_per_container(args: argparse.Namespace) -> Callable[[str], int]:
    """How many subscribers an event of a container reaches."""
    if not args.containers:
        return lambda _name: args.subscribers
    counts: dict[str, int] = {}
    for number in range(args.subscribers):
        name = container_name(number % args.containers)
        counts[name] = counts.get(name, 0) + 1
    return lambda name: counts.get(name, 0)


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def report(args: argparse.Namespace, run: Run) -> None:
    """Print the run's figures, checking each subscriber's events against what was written."""
    written = run.written
    containers_of = dict(zip(run.warm_up.ids, run.warm_up.containers, strict=True))
    containers_of.update(zip(written.ids, written.containers, strict=True))
    everything = sorted(containers_of)
    by_container: dict[str, list[int]] = {}
    for event_id in everything:
        by_container.setdefault(containers_of[event_id], []).append(event_id)
    warm_up_last_id = max(run.warm_up.ids)
    missed = duplicated = out_of_order = unexpected = complete = 0
    latencies: list[float] = []
    after_commit: list[float] = []
    after_answer: list[float] = []
    answered = dict(zip(written.ids, written.answered, strict=True))
    errors: list[str] = []
    last_delivery = 0.0
    for received in run.received:
        expected = (
            everything
            if received["container_id"] is None
            else by_container.get(received["container_id"], [])
        )
        got = received["ids"]
        got_set = set(got)
        missed += len(set(expected) - got_set)
        unexpected += len(got_set - set(expected))
        duplicated += len(got) - len(got_set)
        out_of_order += sum(1 for a, b in zip(got, got[1:], strict=False) if b <= a)
        complete += list(got) == expected
        errors += received["errors"]
        for event_id, latency, arrived in zip(
            got, received["latencies_ms"], received["arrived"], strict=True
        ):
            if event_id > warm_up_last_id:
                latencies.append(latency)
                after_commit.append((arrived - run.committed_at[event_id]) * 1000)
                after_answer.append((arrived - answered[event_id]) * 1000)
        last_delivery = max(last_delivery, received["last_at"])
    latencies.sort()
    after_commit.sort()
    after_answer.sort()
    measured = len(latencies)
    span = last_delivery - written.started if measured else float("nan")
    posts = sorted(written.post_ms)
    mode = (
        f"each subscriber filtered to one of {args.containers} containers (containerId)"
        if args.containers
        else "every subscriber to the whole org"
    )
    print(f"\nmode: {mode}")
    print(
        f"written: {len(written.ids):,} events in {written.seconds:.1f} s "
        f"({len(written.ids) / written.seconds:,.0f} events/s, target {args.rate:,}) in "
        f"{len(posts)} batch POSTs (p50 {statistics.median(posts):.1f} ms, "
        f"p99 {_percentile(posts, 0.99):.1f} ms, max {posts[-1]:.1f} ms)"
    )
    if written.stalled:
        print(
            f"WRITER STALLED: a batch POST went unanswered for {POST_TIMEOUT:.0f} s, so writing "
            "stopped there; its events, if committed, count as unexpected deliveries below"
        )
    print(
        f"delivered: {measured:,} measured deliveries; {measured / span:,.0f} deliveries/s "
        f"from the first write to the last delivery ({span:.1f} s); drain after the last "
        f"write {run.drain_seconds:.1f} s ({'complete' if run.drained else 'GAVE UP'})"
    )
    print(
        "commit -> client (client receive time - the server's commit hook): "
        f"p50 {_percentile(after_commit, 0.5):.1f} ms, "
        f"p99 {_percentile(after_commit, 0.99):.1f} ms, max {_percentile(after_commit, 1.0):.1f} ms"
    )
    print(
        "client receive time - receivedAt (stamped before the transaction's statements): "
        f"p50 {_percentile(latencies, 0.5):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms, "
        f"max {_percentile(latencies, 1.0):.1f} ms"
    )
    print(
        "client receive time - the writer's receipt of the POST's answer (after the commit; "
        f"negative: delivered first): p50 {_percentile(after_answer, 0.5):.1f} ms, "
        f"p99 {_percentile(after_answer, 0.99):.1f} ms"
    )
    print(
        f"exactly once, in order: {complete} of {len(run.received)} subscribers got exactly "
        f"their events; missing at the end {missed:,}, duplicated {duplicated:,}, out of order "
        f"{out_of_order:,}, unexpected {unexpected:,}, stream errors {len(errors)}"
        + (f" (first: {errors[0]})" if errors else "")
    )
    window = written.seconds + run.drain_seconds
    print(
        f"server: {run.server_cpu_seconds:.1f} CPU s over {window:.1f} s of writing and drain "
        f"({run.server_cpu_seconds / window:.0%} of a core), "
        f"{run.server_cpu_seconds * 1e6 / max(measured, 1):.0f} us CPU per delivery; "
        f"peak RSS {run.server_rss_mib:.0f} MiB"
    )
    print(
        "receivers: "
        + ", ".join(f"{cpu / wall:.0%}" for cpu, wall in run.receiver_cpu)
        + " of a core each (CPU over their whole run, connecting excluded)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.subscriptions", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000, help="events written per second")
    parser.add_argument("--seconds", type=float, default=20, help="how long to write")
    parser.add_argument(
        "--containers", type=int, default=0, help="spread subscribers over K containers"
    )
    parser.add_argument("--receivers", type=int, default=2, help="client processes")
    parser.add_argument("--drain", type=float, default=60, help="most seconds to wait after")
    parser.add_argument("--stall", type=float, default=5, help="stop waiting after this long idle")
    parser.add_argument(
        "--database-url", help="a PostgreSQL URL (its schema is dropped and created)"
    )
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    if args.subscribers < 1 or args.rate < 1 or args.receivers < 1 or args.containers < 0:
        parser.error("--subscribers, --rate and --receivers must be >= 1, --containers >= 0")
    with tempfile.TemporaryDirectory(prefix="bench-subscriptions-") as scratch:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(scratch) / 'events.db'}"
        args.key = asyncio.run(prepare(url))
        env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": url}
        target = Target("gateway", "bench.commit_clock:create_app", True, "/graphql")
        with serving(target, env) as (base, pid):
            dialect = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
            receivers = min(args.receivers, args.subscribers)
            print(
                f"{args.subscribers} subscribers in {receivers} receiver processes, "
                f"{args.rate:,} events/s for {args.seconds:g} s in batch POSTs every "
                f"{TICK_SECONDS * 1000:.0f} ms; {dialect}; uvicorn 1 worker, pid {pid}"
            )
            assigned = [
                (number, container_name(number % args.containers) if args.containers else None)
                for number in range(args.subscribers)
            ]
            context = multiprocessing.get_context("spawn")
            pipes, processes = [], []
            socket_url = base.replace("http://", "ws://") + "/graphql"
            for index in range(receivers):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=receiver_main,
                    args=(socket_url, args.key, assigned[index::receivers], theirs),
                )
                process.start()
                pipes.append(ours)
                processes.append(process)
            try:
                run = asyncio.run(_drive(args, base, pid, pipes))
            finally:
                for process in processes:
                    process.join(timeout=10)
                    if process.is_alive():
                        process.terminate()
    report(args, run)


if __name__ == "__main__":
    main()
