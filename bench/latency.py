"""In-process read latency of a 100-event page at several database sizes.

    python -m bench.latency --sizes 10000,100000,1000000,10000000 [--rounds 3]

Each size is a database made by bench.load (loaded on first use, then reused from
bench/data/). Every case calls storage.events.list_events on a reader borrowed for that one
call, as a request does, for the org `bench`, which holds 20% of the events at every size;
the point is to see whether a page costs the same at 10 million events as at ten thousand.

The whole measurement is repeated for a few rounds, one after another, and every figure printed
is the median over the rounds of that round's figure: on this shared machine one round's p99
moves with whatever else ran during it, and the median of a few rounds is steadier.
"""

import argparse
import asyncio
import gc
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.load import (
    MAX_EVENTS,
    Manifest,
    default_database_path,
    load,
    read_manifest,
    schema_fingerprint,
)
from storage.database import Database
from storage.domain import EventFilter, Order
from storage.driver import Reader
from storage.events import Page, Window, list_events

PAGE_SIZE = 100
DEEP_PAGES = 1000
# Runs of one case on one database before the next database takes its turn.
TURN_RUNS = 10
# A 100-event page that grows with the table above this ratio (10M vs 10k) is not flat.
FLAT_RATIO = 1.2


@dataclass(frozen=True)
class Case:
    """One read: the keyword arguments list_events gets besides the session and org."""

    name: str
    arguments: dict[str, Any]


@dataclass
class Result:
    """One case on one database in one round: every timed run, and the rows of the page."""

    samples_ms: list[float]
    rows: int

    def quantile(self, fraction: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_ms)


@dataclass
class Timing:
    """One case on one database over every round: each round's Result, summed up by medians."""

    rounds: list[Result]
    plan: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(result.p50 for result in self.rounds)

    @property
    def p99(self) -> float:
        return statistics.median(result.p99 for result in self.rounds)

    @property
    def mean(self) -> float:
        return statistics.median(result.mean for result in self.rounds)

    @property
    def rows(self) -> int:
        return self.rounds[0].rows

    @property
    def fewest_runs(self) -> int:
        """The timed runs of the round that stopped earliest at the time budget."""
        return min(len(result.samples_ms) for result in self.rounds)


@dataclass
class SizeRun:
    manifest: Manifest
    file_bytes: int
    cached: bool
    deep_pages: int = 0
    results: dict[str, Timing] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """How many rounds timed its cases (all of them alike)."""
        return min(len(timing.rounds) for timing in self.results.values())


async def _deep_cursor(database: Database, org_id: str) -> tuple[int, int | None]:
    """Walk newest-first pages to page DEEP_PAGES; returns (its depth, its after_id).

    Smaller databases run out of pages first: then the last full page is the deep one.
    """
    previous: int | None = None
    start: int | None = None
    depth = 0
    while True:
        async with database.reader() as reader:
            found = await list_events(
                reader, org_id=org_id, page=Page(limit=PAGE_SIZE, after_id=start)
            )
        if found.next_cursor is None:
            return max(depth - 1, 0), previous
        if depth == DEEP_PAGES:
            return depth, start
        following = Page.parse(limit=PAGE_SIZE, cursor=found.next_cursor).after_id
        previous, start, depth = start, following, depth + 1


def cases(manifest: Manifest, deep_after_id: int | None) -> list[Case]:
    """The reads of issue 3: five filters, containers, windows, ascending order, deep cursor."""
    start, end = manifest.span
    middle = start + (end - start) / 2
    hour = timedelta(hours=1)
    page = Page(limit=PAGE_SIZE)
    return [
        Case("newest page", {"page": page}),
        *(
            Case(f"filter {name}", {"event_filter": EventFilter(name), "page": page})
            for name in ("ACCESS", "BLOCK", "CREATE", "EXPIRE", "FAIL")
        ),
        Case("container, busiest", {"container_id": manifest.busy_container, "page": page}),
        Case("container, tail", {"container_id": manifest.tail_container, "page": page}),
        Case("window, last hour", {"window": Window(end - hour, end + hour), "page": page}),
        Case("window, hour at mid-span", {"window": Window(middle, middle + hour), "page": page}),
        # A wider window at the same place: shows whether a page costs the window's size.
        Case(
            "window, day at mid-span", {"window": Window(middle, middle + 24 * hour), "page": page}
        ),
        Case("order asc, first page", {"page": Page(limit=PAGE_SIZE, order=Order.ASC)}),
        Case(
            f"deep cursor (page {DEEP_PAGES})",
            {"page": Page(limit=PAGE_SIZE, after_id=deep_after_id)},
        ),
    ]


async def _time_case(
    databases: Sequence[tuple[Database, list[Case]]],
    org_id: str,
    index: int,
    *,
    runs: int,
    warmup: int,
    budget_s: float,
) -> list[Result]:
    """Case `index` on every database, the databases taking turns in short batches.

    Taking turns spreads a burst of load from other processes on this shared machine over
    every size alike, instead of onto whichever size happened to be measured during it.
    """

    async def read(database: Database, case: Case) -> int:
        async with database.reader() as reader:
            found = await list_events(reader, org_id=org_id, **case.arguments)
        return len(found.rows)

    rows = [0] * len(databases)
    samples: list[list[float]] = [[] for _ in databases]
    for turn, (database, all_cases) in enumerate(databases):
        for _ in range(warmup):
            rows[turn] = await read(database, all_cases[index])
    # A case that turns out slow stops at the time budget, so one bad plan cannot stall a
    # run for an hour; it still gets enough samples to show that it is slow.
    deadline = time.perf_counter() + budget_s
    while len(samples[0]) < runs and (len(samples[0]) < 10 or time.perf_counter() < deadline):
        for turn, (database, all_cases) in enumerate(databases):
            for _ in range(TURN_RUNS):
                started = time.perf_counter_ns()
                await read(database, all_cases[index])
                samples[turn].append((time.perf_counter_ns() - started) / 1e6)
    return [
        Result(samples_ms=taken, rows=count) for taken, count in zip(samples, rows, strict=True)
    ]


async def _time_round(
    databases: Sequence[tuple[Database, list[Case]]],
    org_id: str,
    *,
    runs: int,
    warmup: int,
    budget_s: float,
) -> list[list[Result]]:
    """One round: every case in turn as _time_case times it; per case, a Result per database."""
    return [
        await _time_case(databases, org_id, index, runs=runs, warmup=warmup, budget_s=budget_s)
        for index in range(len(databases[0][1]))
    ]


async def _plans(path: Path, org_id: str, all_cases: Sequence[Case]) -> dict[str, str]:
    """EXPLAIN QUERY PLAN of the statement each case sends, with the parameters it binds.

    list_events runs on a Reader that records instead of executing, so the plan is the one
    of exactly the SQL the gateway sends, whichever way storage builds it.
    """
    sent: list[tuple[str, list[Any]]] = []

    async def record(sql: str, parameters: list[Any]) -> Sequence[Any]:
        sent.append((sql, parameters))
        return []

    database = Database(f"sqlite:///{path}")
    recorder = Reader(record, database.engine.dialect, {})
    explainer = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    plans = {}
    try:
        for case in all_cases:
            sent.clear()
            await list_events(recorder, org_id=org_id, **case.arguments)
            plans[case.name] = " ;; ".join(
                " | ".join(row[-1] for row in explainer.execute("EXPLAIN QUERY PLAN " + sql, args))
                for sql, args in sent
            )
    finally:
        explainer.close()
        await database.dispose()
    return plans


def prepare(size: int, *, reload_stale: bool) -> tuple[Path, Manifest, bool]:
    """The database of `size` events, loaded unless cached; returns (path, manifest, cached)."""
    path = default_database_path(size)
    manifest = read_manifest(path)
    if manifest is not None and manifest.schema != schema_fingerprint():
        if not reload_stale:
            print(f"note: {path.name} predates storage's current schema", file=sys.stderr)
            return path, manifest, True
        manifest = None
    if manifest is not None:
        return path, manifest, True
    print(f"loading {path.name} ...", file=sys.stderr, flush=True)
    return path, load(path, size, replace=True), False


async def run_sizes(
    prepared: Sequence[tuple[Path, Manifest]],
    *,
    rounds: int,
    runs: int,
    warmup: int,
    budget_s: float,
) -> list[tuple[int, dict[str, Timing]]]:
    """Time every case on every database, `rounds` times over, one round after another.

    Returns, per database, the deep cursor's depth and each case's timings over the rounds.
    """
    opened = [Database(f"sqlite:///{path}") for path, _manifest in prepared]
    databases: list[tuple[Database, list[Case]]] = []
    depths = []
    try:
        for database, (_path, manifest) in zip(opened, prepared, strict=True):
            depth, deep_after_id = await _deep_cursor(database, manifest.org_id)
            databases.append((database, cases(manifest, deep_after_id)))
            depths.append(depth)
        [org_id] = {manifest.org_id for _path, manifest in prepared}  # bench.load's org
        # As the server does at start-up (gateway.app): what exists now is kept out of the
        # collector's full passes, which would otherwise land on random samples.
        gc.freeze()
        names = [case.name for case in databases[0][1]]
        timed = []  # per round, per case, per database
        for number in range(rounds):
            print(f"round {number + 1} of {rounds} ...", file=sys.stderr, flush=True)
            timed.append(
                await _time_round(databases, org_id, runs=runs, warmup=warmup, budget_s=budget_s)
            )
    finally:
        for database in opened:
            await database.dispose()
    measured = []
    for turn, ((path, manifest), (_database, all_cases)) in enumerate(
        zip(prepared, databases, strict=True)
    ):
        results = {
            name: Timing([taken[index][turn] for taken in timed])
            for index, name in enumerate(names)
        }
        for name, plan in (await _plans(path, manifest.org_id, all_cases)).items():
            results[name].plan = plan
        measured.append((depths[turn], results))
    return measured


def label(size: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _ratios(first: Result | Timing, last: Result | Timing) -> tuple[float, float]:
    """The p50 and the p99 of `last` as multiples of those of `first`."""
    return last.p50 / first.p50, last.p99 / first.p99


def _print_round_ratios(runs: dict[int, SizeRun], names: Sequence[str], width: int) -> None:
    """Every round's largest-to-smallest p50 / p99 ratios per case: the spread of the medians."""
    smallest, largest = min(runs), max(runs)
    ratio = f"{label(largest)}/{label(smallest)}"
    print(f"each round's {ratio} p50 / p99 ratio, the spread behind the medians above:")
    header = f"{'case (' + ratio + ' p50/p99)':<{width}}"
    rounds = range(1, runs[smallest].rounds + 1)
    print(header + "".join(f"{f'round {number}':>14}" for number in rounds))
    for name in names:
        first, last = runs[smallest].results[name], runs[largest].results[name]
        cells = []
        for smaller, larger in zip(first.rounds, last.rounds, strict=True):
            p50_ratio, p99_ratio = _ratios(smaller, larger)
            cells.append(f"x{p50_ratio:.2f}/x{p99_ratio:.2f}")
        print(f"{name:<{width}}" + "".join(f"{cell:>14}" for cell in cells))


def report(runs: dict[int, SizeRun]) -> None:
    sizes = sorted(runs)
    smallest, largest = sizes[0], sizes[-1]
    names = list(runs[smallest].results)
    width = max(len(name) for name in names) + 2
    rounds = runs[smallest].rounds
    for size in sizes:
        run = runs[size]
        origin = "cached" if run.cached else "loaded now"
        print(
            f"{label(size):>5} events: {run.file_bytes / 2**20:,.0f} MiB, load "
            f"{run.manifest.load_seconds:.1f} s ({run.manifest.events_per_second:,} ev/s, "
            f"{origin}); org {run.manifest.org_id!r} holds {run.manifest.org_events:,}; "
            f"deep cursor at page {run.deep_pages}"
        )
    print()
    print(
        f"p50 / p99 ms, each the median over {rounds} rounds of that round's p50 / p99; "
        f"the ratio of these medians is NOT FLAT above x{FLAT_RATIO:.2f}:"
    )
    ratio_title = f"{label(largest)}/{label(smallest)} p50 / p99"
    header = f"{'case (median p50 / p99 ms)':<{width}}"
    print(header + "".join(f"{label(size):>16}" for size in sizes) + f"  {ratio_title}")
    for name in names:
        cells = "".join(
            f"{runs[size].results[name].p50:>8.2f} /{runs[size].results[name].p99:>6.2f}"
            for size in sizes
        )
        first, last = runs[smallest].results[name], runs[largest].results[name]
        p50_ratio, p99_ratio = _ratios(first, last)
        flag = "  NOT FLAT" if max(p50_ratio, p99_ratio) > FLAT_RATIO else ""
        if first.rows != last.rows:
            # Not the same page: the smaller org holds too few such events to fill one.
            flag += f" ({label(smallest)} page: {first.rows} rows)"
        print(f"{name:<{width}}{cells}  x{p50_ratio:.2f} / x{p99_ratio:.2f}{flag}")
    print()
    _print_round_ratios(runs, names, width)
    print()
    print(
        f"mean ms, the median over {rounds} rounds of that round's mean; runs: the fewest a "
        "round timed (budget); rows: on the page:"
    )
    print(f"{'case (mean ms, runs, rows)':<{width}}" + "".join(f"{label(s):>16}" for s in sizes))
    for name in names:
        cells = "".join(
            f"{runs[s].results[name].mean:>7.2f}{runs[s].results[name].fewest_runs:>5}"
            f"{runs[s].results[name].rows:>4}"
            for s in sizes
        )
        print(f"{name:<{width}}{cells}")
    print()
    print("query plans (EXPLAIN QUERY PLAN of the statements list_events sent):")
    for name in names:
        plans = {size: runs[size].results[name].plan for size in sizes}
        if len(set(plans.values())) == 1:
            print(f"  {name}: {plans[largest]}")
        else:
            for size, plan in plans.items():
                print(f"  {name} [{label(size)}]: {plan}")


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or not all(1 <= size <= MAX_EVENTS for size in sizes):
        raise argparse.ArgumentTypeError(f"comma-separated sizes between 1 and {MAX_EVENTS:,}")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="p50/p99/mean latency of a 100-event list_events page per database size. "
        "Missing databases are loaded with bench.load and kept in bench/data/.",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[10_000, 100_000, 1_000_000],
        help="comma-separated event counts (default 10000,100000,1000000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times the whole measurement is repeated; figures are medians over rounds (3)",
    )
    parser.add_argument(
        "--runs", type=int, default=300, help="timed runs per case and size in a round (300)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed runs first, in every round (20)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds per case in a round before stopping early (20)",
    )
    parser.add_argument(
        "--keep-stale",
        action="store_true",
        help="reuse cached databases built for an older storage schema instead of reloading",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    prepared = []
    cached = []
    for size in args.sizes:
        path, manifest, was_cached = prepare(size, reload_stale=not args.keep_stale)
        prepared.append((path, manifest))
        cached.append(was_cached)
    print(f"measuring {', '.join(label(size) for size in args.sizes)} ...", file=sys.stderr)
    measured = asyncio.run(
        run_sizes(
            prepared,
            rounds=args.rounds,
            runs=args.runs,
            warmup=args.warmup,
            budget_s=args.budget,
        )
    )
    runs = {
        size: SizeRun(manifest, path.stat().st_size, was_cached, depth, results)
        for size, (path, manifest), was_cached, (depth, results) in zip(
            args.sizes, prepared, cached, measured, strict=True
        )
    }
    report(runs)


if __name__ == "__main__":
    main()
