"""GraphQL as frontends send it, each run paired with a run of the REST page just before it.

    python -m bench.graphql [--events 100000] [--database-url URL] [--connections 1,16]
                            [--seconds 5] [--rounds 3] [--only TEXT]

The gateway runs under uvicorn (one worker, 127.0.0.1) on a bench.load database (SQLite or
PostgreSQL, read as bench.http reads it), and wrk (Debian package `wrk`) POSTs one GraphQL
document at a time to /graphql with the bench org's key: every query operation of `queries/`
as shipped, with its operationName and variables (orgId, first 100, the busiest container of
the newest REST page, a 24-hour window of whole hours ending after the newest event), then the
shapes frontends write by hand (edges with and without `container { id }` and `totalCount`,
the FAIL filter, one container's events) and bench.http's `nodes` page. Right before each
GraphQL run the REST page `GET /orgs/bench/events?limit=100` runs on the same server, so every
GraphQL figure has a REST figure from moments before. Each target is sent once first; any
answer other than 200 without `errors` stops the run. Targets take turns for `--rounds` rounds
at each of the `--connections` concurrencies.

Printed per target and concurrency: the median over rounds of requests/s, p50 and p99 latency,
p99/p50, the server's CPU time per request, the paired REST page's median requests/s, and the
median of the rounds' GraphQL/REST ratios; then per target that ratio at the highest
concurrency divided by the ratio at the lowest. Figures only: nothing here passes or fails.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from graphql import NonNullTypeNode, OperationDefinitionNode, OperationType, parse

from bench.http import (
    GRAPHQL,
    REST,
    ROOT,
    Result,
    Target,
    _median,
    _read_database,
    _wrk_script,
    add_database_arguments,
    graphql_body,
    measure,
    serving,
    targets,
)
from bench.load import is_postgres

PAGE = 100
NODE = "id eventType status timestamp actor"
PAGE_INFO = "pageInfo { hasNextPage endCursor }"


def _authorized(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _get_json(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers=_authorized(key))
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback only)
        return json.load(answer)


def _edges(fields: str) -> str:
    return f"edges {{ node {{ {fields} }} }}"


def _hand_written(org_id: str, container_id: str) -> list[Target]:
    """The shapes of issue 15: what frontends write by hand rather than take from queries/."""
    container = f"{NODE} container {{ id }}"
    page = f"events(first: {PAGE})"
    shapes = [  # (target, operationName, what it selects of the org)
        ("edges", "EventsEdges", f"{page} {{ {_edges(NODE)} {PAGE_INFO} }}"),
        ("edges + container", "EventsContainer", f"{page} {{ {_edges(container)} {PAGE_INFO} }}"),
        (
            "edges + container + totalCount",
            "EventsTotal",
            f"{page} {{ totalCount {_edges(container)} {PAGE_INFO} }}",
        ),
        (
            "FAIL, edges + container",
            "FailEvents",
            f"events(filter: FAIL, first: {PAGE}) {{ {_edges(container)} {PAGE_INFO} }}",
        ),
        (
            "container(id) events, edges",
            "OneContainer",
            f"container(id: $containerId) {{ {page} {{ {_edges(NODE)} }} }}",
        ),
    ]
    found = []
    for name, operation, selection in shapes:
        variables = {"orgId": org_id}
        declared = "$orgId: ID!"
        if "$containerId" in selection:
            variables["containerId"] = container_id
            declared += ", $containerId: ID!"
        document = f"query {operation}({declared}) {{ org(id: $orgId) {{ {selection} }} }}"
        found.append(
            Target(
                name,
                "gateway.app:create_app",
                True,
                "/graphql",
                graphql=document,
                authenticated=True,
                operation_name=operation,
                variables=variables,
            )
        )
    return found


def _shipped(org_id: str, container_id: str, since: datetime, until: datetime) -> list[Target]:
    """Every query operation of queries/ as shipped, with the variables a frontend would pass:
    `first` and whatever the operation requires (an optional filter, container or window would
    narrow the page the REST page is compared with)."""
    offered = {
        "orgId": org_id,
        "first": PAGE,
        "containerId": container_id,
        "since": since.isoformat(),
        "until": until.isoformat(),
    }
    found = []
    for path in sorted((ROOT / "queries").glob("*.graphql")):
        document = path.read_text()
        for operation in parse(document).definitions:
            if not isinstance(operation, OperationDefinitionNode) or operation.name is None:
                continue
            if operation.operation is not OperationType.QUERY:
                continue  # the mutations and the subscription
            variables = {}
            for definition in operation.variable_definitions or ():
                name = definition.variable.name.value
                required = isinstance(definition.type, NonNullTypeNode)
                if name == "first" or (required and definition.default_value is None):
                    variables[name] = offered[name]  # a KeyError: a new operation to provide for
            found.append(
                Target(
                    path.name,
                    "gateway.app:create_app",
                    True,
                    "/graphql",
                    graphql=document,
                    authenticated=True,
                    operation_name=operation.name.value,
                    variables=variables,
                )
            )
    return found


def _check(base: str, target: Target, key: str) -> None:
    """Send the target once; exit loudly unless it answers 200 without `errors`."""
    request = urllib.request.Request(
        base + target.path,
        data=json.dumps(graphql_body(target)).encode(),
        headers={**_authorized(key), "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback only)
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    errors = json.loads(text).get("errors") if status == 200 else None
    if status != 200 or errors:
        print(f"{target.name} ({target.operation_name}) failed: {status}", file=sys.stderr)
        print(json.dumps(errors, indent=2) if errors else text, file=sys.stderr)
        print(f"variables: {json.dumps(target.variables)}", file=sys.stderr)
        sys.exit(1)


@dataclass(frozen=True)
class Pair:
    """A GraphQL run and the REST page's run right before it."""

    rest: Result
    graphql: Result


def _connection_counts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    items = text.split(",")
    if not all(item.strip().isdigit() and int(item) > 0 for item in items):
        parser.error(f"--connections: positive integers separated by commas, not {text!r}")
    return [int(item) for item in items]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.graphql", description=__doc__)
    add_database_arguments(parser)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target and concurrency")
    parser.add_argument("--connections", default="1,16", help="comma-separated wrk concurrencies")
    parser.add_argument(
        "--only", default="", help="run only the targets whose name contains this text"
    )
    args = parser.parse_args(argv)
    connections = _connection_counts(parser, args.connections)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")

    database_url, manifest, key = _read_database(parser, args.database_url, args.events)
    env = {**os.environ, "EVENTS_GATEWAY_DATABASE_URL": database_url}
    by_name = {target.name: target for target in targets(manifest.org_id)}
    rest = by_name[REST]
    with tempfile.TemporaryDirectory() as scratch, serving(rest, env) as (base, pid):
        # The newest page: its busiest container, and the whole hours up to its newest event.
        page = _get_json(base + rest.path, key)["events"]
        container_id = Counter(event["container_id"] for event in page).most_common(1)[0][0]
        newest = datetime.fromisoformat(page[0]["timestamp"])
        until = newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        since = until - timedelta(hours=24)
        graphql_targets = [
            *_shipped(manifest.org_id, container_id, since, until),
            *_hand_written(manifest.org_id, container_id),
            replace(by_name[GRAPHQL], name="bench.http: nodes, 8 fields"),
        ]
        graphql_targets = [target for target in graphql_targets if args.only in target.name]
        if not graphql_targets:
            parser.error(f"--only {args.only!r}: no target's name contains it")
        dialect = "PostgreSQL" if is_postgres(database_url) else "SQLite"
        print(
            f"{dialect}: {manifest.events:,} events, org {manifest.org_id!r} holds "
            f"{manifest.org_events:,}; container {container_id!r}, EventCounts "
            f"{since.isoformat()} to {until.isoformat()}; wrk -t1 at -c {args.connections}, "
            f"-d{args.seconds}s per run, {args.rounds} rounds, uvicorn 1 worker; each GraphQL "
            f"run right after a run of GET {rest.path}"
        )
        for target in graphql_targets:
            _check(base, target, key)
        rest_script = _wrk_script(rest, key, Path(scratch) / "rest.lua")
        scripts = [
            _wrk_script(target, key, Path(scratch) / f"graphql-{number}.lua")
            for number, target in enumerate(graphql_targets)
        ]
        pairs: dict[tuple[str, int], list[Pair]] = {}
        for _round in range(args.rounds):
            for count in connections:
                for target, script in zip(graphql_targets, scripts, strict=True):
                    # The REST page first, then the GraphQL target, on the same server.
                    rest_result, graphql_result = (
                        measure(base + path, run, pid=pid, seconds=args.seconds, connections=count)
                        for path, run in ((rest.path, rest_script), (target.path, script))
                    )
                    pairs.setdefault((target.name, count), []).append(
                        Pair(rest_result, graphql_result)
                    )

    width = max(len(target.name) for target in graphql_targets)
    print(
        f"\n{'target':{width}} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99/p50':>7} {'CPU ms/req':>10} {'REST req/s':>10} {'GraphQL/REST':>12} errors"
    )
    ratios: dict[tuple[str, int], float] = {}
    for (name, count), taken in pairs.items():
        result = _median([pair.graphql for pair in taken])
        rest_rate = statistics.median(pair.rest.requests_per_second for pair in taken)
        ratios[(name, count)] = statistics.median(
            pair.graphql.requests_per_second / pair.rest.requests_per_second for pair in taken
        )
        errors = sum(pair.rest.errors + pair.graphql.errors for pair in taken)
        print(
            f"{name:{width}} {count:3} {result.requests_per_second:8.0f} {result.p50_ms:8.2f} "
            f"{result.p99_ms:8.2f} {result.p99_ms / result.p50_ms:7.1f} "
            f"{result.cpu_ms_per_request:10.3f} {rest_rate:10.0f} "
            f"{ratios[(name, count)]:12.2f} {errors}"
        )
    if len(connections) > 1:
        low, high = min(connections), max(connections)
        print(f"\nGraphQL/REST at c={high} divided by GraphQL/REST at c={low}:")
        for target in graphql_targets:
            change = ratios[(target.name, high)] / ratios[(target.name, low)]
            print(f"{target.name:{width}} {change:5.2f}")


if __name__ == "__main__":
    main()
