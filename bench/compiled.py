"""GraphQL execution alone, storage excluded: compiled plans against graphql-core, in one run.

    python -m bench.compiled [--rounds 5] [--repeats 300] [--events 100]

Each shape below is executed by the gateway's schema (parse and validation cached, as on a
server) with its storage calls answered from memory: a page of `--events` rows, their ten
containers, the org. So what is timed is the GraphQL layer only: Strawberry's pipeline and
either the compiled plan (schema.compiled) or graphql-core's field-by-field execution
(`build_schema(compiled=False)`). Printed per shape and path: the median over rounds of the
median time of one execution, the plan's run alone (the part a plan replaces), and the ratio.
Figures only.
"""

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import schema.compiled
import schema.context
import schema.types
from schema import build_schema
from schema.context import Context
from schema.execution import GatewayExecutor
from storage.events import EVENT_COLUMNS, EventPage, EventRows
from storage.orgs import ContainerRecord, OrgRecord

SHAPES = {
    "edges { node { 5 leaves } } pageInfo": (
        '{ org(id: "acme") { events(first: 100) { edges { node { id eventType status '
        "timestamp actor } } pageInfo { hasNextPage endCursor } } } }"
    ),
    "+ container { id }": (
        '{ org(id: "acme") { events(first: 100) { edges { cursor node { id eventType status '
        "timestamp actor container { id } } } pageInfo { hasNextPage endCursor } } } }"
    ),
    "nodes { 8 leaves }": (
        '{ org(id: "acme") { events(first: 100) { nodes { id containerId eventType status '
        "timestamp receivedAt actor details } } } }"
    ),
}
START = datetime(2023, 11, 18, 12, tzinfo=UTC)


class _Reader:
    async def __aenter__(self) -> "_Reader":
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None


class _Database:
    """The reads the plans and resolvers make of Database: a reader turn and the org."""

    def __init__(self, org: OrgRecord) -> None:
        self._org = org

    def reader(self) -> _Reader:
        return _Reader()

    async def org(self, org_id: str) -> OrgRecord | None:
        return self._org if org_id == self._org.id else None


ORG = OrgRecord("acme", "Acme", START)


@contextmanager
def in_memory(events: int) -> Iterator[None]:
    """Storage answered from memory for the modules that call it."""
    rows = [
        {
            "id": 10_000 - number,
            "org_id": "acme",
            "container_id": f"c{number % 10}",
            "event_type": ["ACCESS", "BLOCK", "CREATE", "EXPIRE"][number % 4],
            "status": "FAILURE" if number % 3 else "SUCCESS",
            "timestamp": START + timedelta(seconds=number, microseconds=number * 7),
            "received_at": START + timedelta(seconds=number, microseconds=5),
            "actor": f"user{number}@example.com" if number % 2 else None,
            "details": {"ip": "10.0.0.1", "n": number} if number % 3 else None,
            "key_id": None,
        }
        for number in range(events)
    ]
    page = EventPage(rows=rows, next_cursor="ZTk5MDA")
    # The same rows as asyncpg returns them, for the plans (storage.events.list_event_rows).
    raw = [tuple(row[column] for column in EVENT_COLUMNS) for row in rows]
    raw_page = EventRows(rows=raw, next_cursor="ZTk5MDA", dialect="postgresql")
    containers = {f"c{n}": ContainerRecord("acme", f"c{n}", START, START) for n in range(10)}

    async def list_events(*_args: Any, **_kwargs: Any) -> EventPage:
        return page

    async def list_event_rows(*_args: Any, **_kwargs: Any) -> EventRows:
        return raw_page

    async def get_containers(*_args: Any, container_ids: Sequence[str], **_kwargs: Any) -> Any:
        return {key: containers[key] for key in set(container_ids)}

    patches = [
        (schema.compiled, "list_event_rows", list_event_rows),
        (schema.types, "list_events", list_events),
        (schema.compiled, "get_containers", get_containers),
        (schema.context, "get_containers", get_containers),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


async def _median_ms(schema: Any, query: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = await schema.execute(
            query, context_value=Context(db=_Database(ORG), org_id="acme")
        )
        times.append(time.perf_counter() - started)
        if result.errors:
            raise RuntimeError(result.errors)
    return statistics.median(times) * 1000


async def run(rounds: int, repeats: int) -> None:
    compiled, reference = build_schema(), build_schema(compiled=False)
    plan_times: list[float] = []
    original = GatewayExecutor._execute_compiled

    async def timed(self: GatewayExecutor, plan: Any, serially: Any) -> Any:
        started = time.perf_counter()
        result = await original(self, plan, serially)
        plan_times.append(time.perf_counter() - started)
        return result

    GatewayExecutor._execute_compiled = timed  # type: ignore[method-assign]
    print(f"{'shape':<38} {'graphql-core':>12} {'compiled':>9} {'plan run':>9} {'ratio':>6}  (ms)")
    try:
        for name, query in SHAPES.items():
            figures = []
            for _round in range(rounds):
                plan_times.clear()
                ordinary = await _median_ms(reference, query, repeats)
                planned = await _median_ms(compiled, query, repeats)
                figures.append((ordinary, planned, statistics.median(plan_times) * 1000))
            ordinary, planned, plan_run = (
                statistics.median(column) for column in zip(*figures, strict=True)
            )
            print(
                f"{name:<38} {ordinary:12.3f} {planned:9.3f} {plan_run:9.3f} "
                f"{ordinary / planned:6.1f}"
            )
    finally:
        GatewayExecutor._execute_compiled = original  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=300, help="executions per round")
    parser.add_argument("--events", type=int, default=100, help="rows in the page")
    args = parser.parse_args(argv)
    with in_memory(args.events):
        asyncio.run(run(args.rounds, args.repeats))


if __name__ == "__main__":
    main()
