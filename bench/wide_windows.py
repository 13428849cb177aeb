"""The widest windows against a large database, and how long /healthz waits meanwhile.

    python -m bench.wide_windows --database-url sqlite:///bench/data/events-1000000.db
    python -m bench.wide_windows --database-url postgresql+asyncpg://.../bench

Runs the gateway under uvicorn on a database made by bench.load and, for org `bench`, issues
one at a time: counts over years 1 to 9999 by container, type and status, under a filter and
for the busiest container, the same through GraphQL, list pages with since=0001 and
until=9999, and a since in the last hour of 9999. Meanwhile a probe in a process of its own
asks /healthz every 10 ms. Prints each request's status and latency with the longest /healthz
wait while it ran, then the /healthz p50, p99 and max over all of them: the time any other
request waits behind a wide one. Figures only; nothing asserts.
"""

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from typing import Any

import httpx

from bench.http import Target, serving
from bench.load import (
    Manifest,
    is_postgres,
    key_path,
    postgres_stand_in,
    read_manifest,
    read_postgres_manifest,
    sqlite_path,
)

FIRST, LAST_DAY = "0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"
LAST_HOUR = "9999-12-31T23:30:00Z"
REPEATS = 3
PROBE_EVERY = 0.01
Probe = tuple[float, float]  # when the answer came (time.monotonic), how long it took
GATEWAY = Target("gateway", "gateway.app:create_app", True, "/healthz")
EVENT_COUNTS = """
query ($since: DateTime!, $until: DateTime!, $by: CountBy!, $containerId: ID) {
  org(id: "bench") {
    eventCounts(since: $since, until: $until, by: $by, containerId: $containerId) { key count }
  }
}
"""


@dataclass(frozen=True)
class Request:
    name: str
    path: str
    params: dict[str, str] | None = None
    graphql: dict[str, Any] | None = None  # variables of EVENT_COUNTS, POSTed to /graphql


def requests(manifest: Manifest) -> list[Request]:
    org, busy = manifest.org_id, manifest.busy_container
    counts, widest = f"/orgs/{org}/events/counts", {"since": FIRST, "until": LAST_DAY}
    return [
        *[
            Request(f"counts by {by}, years 1-9999", counts, {**widest, "by": by})
            for by in ("container", "type", "status")
        ],
        Request(
            "counts by container, filter fail",
            counts,
            {**widest, "by": "container", "filter": "fail"},
        ),
        Request(
            "counts by type, busiest container",
            counts,
            {**widest, "by": "type", "container_id": busy},
        ),
        Request(
            "GraphQL eventCounts(by: CONTAINER)",
            "/graphql",
            graphql={"since": FIRST, "until": LAST_DAY, "by": "CONTAINER"},
        ),
        Request("list, since 0001", f"/orgs/{org}/events", {"since": FIRST}),
        Request("list, until 9999", f"/orgs/{org}/events", {"until": LAST_DAY}),
        Request("list, since 0001 until 9999", f"/orgs/{org}/events", widest),
        Request("by_fail, since 0001 until 9999", f"/orgs/{org}/container_events/by_fail", widest),
        Request(
            "container, since 0001 until 9999", f"/orgs/{org}/containers/{busy}/events", widest
        ),
        Request("list, since in the last hour", f"/orgs/{org}/events", {"since": LAST_HOUR}),
    ]


def probe(
    base: str, ready: EventType, stop: EventType, answers: "multiprocessing.Queue[list[Probe]]"
) -> None:
    """Ask /healthz every PROBE_EVERY seconds (`ready` after the first answer) until `stop`,
    then put on `answers` when each answer came (time.monotonic, the same clock in every
    process) and how long it took.

    It runs in a process of its own: in the process that sends the wide requests, decoding a
    large answer (counts by container) holds that process's event loop and delayed its own
    probes by up to ~130 ms while the server answered /healthz in a few milliseconds."""
    found: list[Probe] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()
            client.get("/healthz")
            answered = time.monotonic()
            found.append((answered, answered - started))
            ready.set()
            time.sleep(PROBE_EVERY)
    answers.put(found)


async def send(client: httpx.AsyncClient, key: str, request: Request) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    if request.graphql is not None:
        body = {"query": EVENT_COUNTS, "variables": request.graphql}
        answer = await client.post(request.path, json=body, headers=headers)
        ok = answer.status_code == 200 and "errors" not in answer.json()
        status = answer.status_code if ok else 500
    else:
        answer = await client.get(request.path, params=request.params, headers=headers)
        status = answer.status_code
    return status, time.perf_counter() - started


async def run(base: str, key: str, manifest: Manifest) -> None:
    timeout = httpx.Timeout(60)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        await client.get("/healthz")
        spawn = multiprocessing.get_context("spawn")
        ready, stop, answers = spawn.Event(), spawn.Event(), spawn.Queue()
        prober = spawn.Process(target=probe, args=(base, ready, stop, answers), daemon=True)
        prober.start()
        # the probe process is probing before the first request
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the /healthz probe did not start")
        windows: list[tuple[Request, list[tuple[int, float]], float, float]] = []
        for request in requests(manifest):
            began = time.monotonic()
            found = [await send(client, key, request) for _ in range(REPEATS)]
            # the probes answered while these requests ran, or the first one after
            await asyncio.sleep(2 * PROBE_EVERY)
            windows.append((request, found, began, time.monotonic()))
        stop.set()
        delays: list[Probe] = answers.get(timeout=60)
        prober.join(timeout=10)
        print(f"{'request':38}{'status':>8}{'best ms':>10}{'worst ms':>10}{'healthz max':>13}")
        for request, found, began, ended in windows:
            waits = [delay * 1000 for at, delay in delays if began < at <= ended]
            statuses = sorted({status for status, _ in found})
            seconds = [elapsed * 1000 for _, elapsed in found]
            status_text = ",".join(str(status) for status in statuses)
            print(
                f"{request.name:38}{status_text:>8}{min(seconds):10.1f}{max(seconds):10.1f}"
                f"{max(waits, default=float('nan')):13.1f}"
            )
    ms = sorted(delay * 1000 for _, delay in delays)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"/healthz during them: {len(ms)} probes, p50 {statistics.median(ms):.1f} ms, "
        f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


def database(parser: argparse.ArgumentParser, url: str) -> tuple[str, Manifest, str]:
    """The gateway's URL of a bench.load database, its manifest and the bench org's key."""
    if is_postgres(url):
        manifest = read_postgres_manifest(url)
        stand_in = postgres_stand_in(url)
    else:
        stand_in = sqlite_path(url)
        manifest = read_manifest(stand_in)
        url = f"sqlite+aiosqlite:///{stand_in}"
    if manifest is None:
        parser.error(f"load it first: python -m bench.load --database-url {url}")
    return url, manifest, key_path(stand_in).read_text().strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wide_windows", description=__doc__)
    parser.add_argument("--database-url", required=True, help="a database made by bench.load")
    args = parser.parse_args(argv)
    url, manifest, key = database(parser, args.database_url)
    print(f"{manifest.events:,} events; org {manifest.org_id!r} holds {manifest.org_events:,}")
    with serving(GATEWAY, {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": url}) as (base, _pid):
        asyncio.run(run(base, key, manifest))


if __name__ == "__main__":
    main()
