"""Single-event POST throughput and latency, group commit against one transaction per request.

    python -m bench.writes [--seconds 5] [--rounds 3] [--connections 1,16,64]
                           [--workers 1,2] [--postgres postgresql+asyncpg://...]

The servers run under uvicorn on 127.0.0.1, with one worker or once per `--workers` count: the
gateway with group commit (the default), the gateway with EVENTS_GATEWAY_GROUP_COMMIT=0 (one
transaction per request), each on its own new SQLite file with the gateway's settings (WAL,
synchronous=FULL) and, with `--postgres`, each again on that PostgreSQL database (whose schema
is dropped and created afresh first; they share it, each writing as its own org), and the
constant-JSON Starlette endpoint of bench/http_apps.py as the ceiling (a GET: it takes no
body). wrk (Debian package `wrk`) POSTs one event per request to
`/orgs/{org_id}/containers/{container_id}/events`, cycling over a list of containers, at each
concurrency (wrk connections); every answer comes after its event is committed, so req/s is
events/s durably stored. The targets take turns for several rounds, so a burst of noise on
this shared machine lands on every target alike. Printed per concurrency: the median over
rounds of req/s, p50 and p99 latency, the server's CPU ms per request (its master and workers
together), and the ratios to the ceiling and to one transaction per request on the same
database, both at the same worker count; then each round's ratios, the headline ratios
at the highest concurrency, and each target's event count against the 2xx answers wrk
counted (every acknowledged POST must be stored). Non-2xx answers and socket errors are
counted and printed; a run with any says so loudly, with the first error's status and body.
Figures only; nothing asserts a time.
"""

import argparse
import asyncio
import io
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import func, select

from bench.http import Target, cpu_seconds, read_wrk, serving
from bench.ingest import create_database
from storage.database import Database, normalize_url
from storage.models import events
from storage.orgs import create_org

ORG_ID = "writes"
CONTAINERS = 50
EVENT = {
    "event_type": "ACCESS",
    "status": "SUCCESS",
    "timestamp": "2026-11-29T12:00:00Z",
    "actor": "bench",
    "details": {"ip": "10.0.0.1"},
}
WARM_UP_SECONDS = 2
WRK_TIMEOUT = "10s"  # a slow answer is measured rather than dropped as a timeout

CEILING = "ceiling: constant JSON (GET)"
GROUP = "gateway, group commit"
SINGLE = "gateway, one tx per request"


@dataclass(frozen=True)
class Subject:
    """A target at one worker count: its kind (CEILING, GROUP or SINGLE), where it writes
    (SQLite file, or the org it writes as in PostgreSQL; None for the ceiling), its settings
    and its API key."""

    target: Target
    kind: str
    database: str  # "SQLite", "PostgreSQL" or "" for the ceiling
    workers: int
    env: dict[str, str]
    key: str = ""
    sqlite_file: Path | None = None

    @property
    def writes(self) -> bool:
        return self.kind != CEILING


@dataclass(frozen=True)
class Run:
    """One wrk run, as wrk reported it, plus the server's CPU time."""

    requests: int  # answers wrk received, whatever their status
    non_2xx: int  # wrk's "Non-2xx or 3xx responses" (in fact status >= 400)
    socket_errors: dict[str, int]  # connect, read, write, timeout
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    first_error: str | None = None

    @property
    def acknowledged(self) -> int:
        return self.requests - self.non_2xx

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def _lua(value: str) -> str:
    """A Lua string literal (JSON's escapes are a subset of Lua's)."""
    return json.dumps(value)


def _post_script(
    key: str, script: Path, *, org_id: str = ORG_ID, capture_errors: bool = False
) -> Path:
    """POST one event per request, cycling over the containers; requests are built once.

    With capture_errors, the first answer with status >= 400 in each thread is printed at the
    end as `FIRST-ERROR status body` (a `response` callback costs wrk time, so it is kept out
    of the measured runs)."""
    paths = [f"/orgs/{org_id}/containers/vault-{number:03d}/events" for number in range(CONTAINERS)]
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua(json.dumps(EVENT))}",
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Authorization"] = {_lua(f"Bearer {key}")}',
        "local paths = {" + ", ".join(_lua(path) for path in paths) + "}",
        "local requests = {}",
        "local counter = 0",
        "function init(args)",
        "  for i, path in ipairs(paths) do requests[i] = wrk.format(nil, path) end",
        "end",
        "function request()",
        "  counter = counter + 1",
        "  return requests[(counter % #requests) + 1]",
        "end",
    ]
    if capture_errors:
        lines += [
            "local threads = {}",
            "function setup(thread) table.insert(threads, thread) end",
            "first_error = nil",
            "function response(status, headers, body)",
            "  if status >= 400 and first_error == nil then",
            '    first_error = status .. " " .. string.sub(body or "", 1, 500)',
            "  end",
            "end",
            "function done(summary, latency, requests)",
            "  for _, thread in ipairs(threads) do",
            '    local found = thread:get("first_error")',
            '    if found then io.write("FIRST-ERROR " .. found .. "\\n") end',
            "  end",
            "end",
        ]
    script.write_text("\n".join(lines) + "\n")
    return script


def _wrk(url: str, script: Path | None, *, pid: int, seconds: int, connections: int) -> Run:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT}"]
    command += ["--latency", *(["-s", str(script)] if script is not None else []), url]
    cpu_before = cpu_seconds(pid)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(pid) - cpu_before
    report = read_wrk(output)
    cpu_ms = cpu * 1000 / report.requests if report.requests else float("nan")
    return Run(
        report.requests,
        report.non_2xx,
        report.socket_errors,
        report.requests_per_second,
        report.p50_ms,
        report.p99_ms,
        cpu_ms,
        report.first_error,
    )


def _median(runs: Sequence[Run]) -> Run:
    socket_errors: dict[str, int] = {}
    for run in runs:
        for name, count in run.socket_errors.items():
            socket_errors[name] = socket_errors.get(name, 0) + count
    return Run(
        requests=sum(run.requests for run in runs),
        non_2xx=sum(run.non_2xx for run in runs),
        socket_errors=socket_errors,
        requests_per_second=statistics.median(run.requests_per_second for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        cpu_ms_per_request=statistics.median(run.cpu_ms_per_request for run in runs),
        first_error=next((run.first_error for run in runs if run.first_error), None),
    )


def _label(kind: str, database: str, workers: int) -> str:
    """A target's name: what it is, on which database, with how many uvicorn workers."""
    on = f", {database}" if database else ""
    return f"{kind}{on}, {workers} worker{'s' if workers > 1 else ''}"


def _org(kind: str, workers: int) -> str:
    """The org a PostgreSQL target writes as: its targets share the database, not an org."""
    return f"{ORG_ID}-{'group' if kind == GROUP else 'one-tx'}-{workers}"


async def _fresh_postgres(url: str, orgs: Sequence[str]) -> dict[str, str]:
    """Drop and create the app's schema in the PostgreSQL database, with the orgs; their keys."""
    database = Database(url)
    try:
        await database.drop_schema()
        await database.create_schema()
        keys = {}
        for org_id in orgs:
            async with database.session() as session:
                _row, keys[org_id] = await create_org(session, org_id=org_id)
        return keys
    finally:
        await database.dispose()


async def _stored_postgres(url: str, orgs: Sequence[str]) -> dict[str, int]:
    database = Database(url)
    try:
        async with database.session() as session:
            query = select(events.c.org_id, func.count()).group_by(events.c.org_id)
            counted = {org_id: count for org_id, count in (await session.execute(query)).all()}
        return {org_id: int(counted.get(org_id, 0)) for org_id in orgs}
    finally:
        await database.dispose()


def _stored_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM events").fetchone()[0])


def _subjects(scratch: Path, workers: Sequence[int], postgres: str | None) -> list[Subject]:
    """Per worker count: the ceiling, and the gateway with group commit and with one tx per
    request on a new SQLite file each and, given a URL, as its own org in a PostgreSQL database
    whose schema is dropped and created afresh here."""
    path = f"/orgs/{ORG_ID}/containers/vault-000/events"  # wrk's URL; the script sets paths
    modes = ((GROUP, "1"), (SINGLE, "0"))
    postgres_keys = {}
    if postgres is not None:
        orgs = [_org(kind, count) for count in workers for kind, _ in modes]
        postgres_keys = asyncio.run(_fresh_postgres(postgres, orgs))
    subjects = []
    for count in workers:
        name = _label(CEILING, "", count)
        ceiling = Target(name, "bench.http_apps:ceiling", False, "/")
        subjects.append(Subject(ceiling, CEILING, "", count, {}))
        for kind, group_commit in modes:
            directory = scratch / f"{'group-commit' if group_commit == '1' else 'one-tx'}-{count}"
            directory.mkdir()
            database = directory / "events.db"
            key = asyncio.run(create_database(database, ORG_ID))
            env = {
                "EVENTS_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
                "EVENTS_GATEWAY_GROUP_COMMIT": group_commit,
            }
            name = _label(kind, "SQLite", count)
            target = Target(name, "gateway.app:create_app", True, path, authenticated=True)
            subjects.append(Subject(target, kind, "SQLite", count, env, key, database))
        if postgres is None:
            continue
        for kind, group_commit in modes:
            org_id = _org(kind, count)
            env = {
                "EVENTS_GATEWAY_DATABASE_URL": postgres,
                "EVENTS_GATEWAY_GROUP_COMMIT": group_commit,
            }
            name = _label(kind, "PostgreSQL", count)
            target = Target(
                name,
                "gateway.app:create_app",
                True,
                path.replace(ORG_ID, org_id, 1),
                authenticated=True,
            )
            subjects.append(Subject(target, kind, "PostgreSQL", count, env, postgres_keys[org_id]))
    return subjects


def _loud(message: str) -> None:
    print(f"\n{'!' * 78}\n!!! {message}\n{'!' * 78}", file=sys.stderr, flush=True)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _counts(text: str, what: str) -> list[int]:
    """Comma-separated whole numbers, each >= 1."""
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{what} must be integers separated by commas: {text}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"{what} needs at least one number, each >= 1")
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writes", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns per target")
    parser.add_argument(
        "--connections", default="1,16,64", help="comma-separated wrk concurrencies"
    )
    parser.add_argument(
        "--workers", default="1", help="comma-separated uvicorn worker counts (default 1)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also run the gateway targets on this PostgreSQL database "
        "(postgresql+asyncpg://...); its schema is DROPPED and created afresh",
    )
    parser.add_argument(
        "--directory", help="where the new databases go (default: a new temporary directory)"
    )
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):  # keep the tables in order with stderr
        sys.stdout.reconfigure(line_buffering=True)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")
    try:
        concurrencies = _counts(args.connections, "--connections")
        worker_counts = _counts(args.workers, "--workers")
        if args.postgres is not None and not normalize_url(args.postgres).startswith("postgresql"):
            raise ValueError(f"--postgres needs a postgresql URL, not {args.postgres}")
    except ValueError as error:
        parser.error(str(error))

    turns: dict[tuple[str, int], list[Run]] = {}
    acknowledged: dict[str, int] = {}  # 2xx answers wrk counted, warm-ups and probes included
    failures: list[str] = []
    with (
        tempfile.TemporaryDirectory(dir=args.directory, prefix="bench-writes-") as scratch,
        ExitStack() as servers,
    ):
        subjects = _subjects(Path(scratch), worker_counts, args.postgres)
        on_postgres = "" if args.postgres is None else " and one fresh PostgreSQL schema"
        print(
            f"single-event POSTs over {CONTAINERS} containers, one org per target; new SQLite "
            f"files in {scratch}{on_postgres}; wrk -t1 -c{{{args.connections}}} "
            f"-d{args.seconds}s (after a {WARM_UP_SECONDS}s warm-up) per turn, {args.rounds} "
            f"rounds, uvicorn {{{args.workers}}} worker(s)",
            flush=True,
        )
        running = []
        for number, subject in enumerate(subjects):
            env = {**os.environ, **subject.env}
            base, pid = servers.enter_context(serving(subject.target, env, workers=subject.workers))
            name = subject.target.name
            script = None
            probe = None
            if subject.writes:
                org_id = subject.target.path.split("/")[2]
                script = _post_script(
                    subject.key, Path(scratch) / f"target-{number}.lua", org_id=org_id
                )
                probe = _post_script(
                    subject.key,
                    Path(scratch) / f"probe-{number}.lua",
                    org_id=org_id,
                    capture_errors=True,
                )
            running.append((subject, base + subject.target.path, pid, script, probe))
            acknowledged[name] = 0
        for round_number in range(1, args.rounds + 1):
            for connections in concurrencies:
                for subject, url, pid, script, probe in running:
                    name = subject.target.name
                    runs = [
                        _wrk(url, script, pid=pid, seconds=seconds, connections=connections)
                        for seconds in (WARM_UP_SECONDS, args.seconds)
                    ]
                    result = runs[-1]
                    acknowledged[name] += sum(run.acknowledged for run in runs)
                    if any(run.errors for run in runs):
                        errors = ", ".join(
                            f"{label}: {run.non_2xx} non-2xx, socket errors {run.socket_errors}"
                            for label, run in zip(("warm-up", "measured"), runs, strict=True)
                        )
                        first = None
                        if probe is not None:  # the same load again, keeping an error's text
                            probed = _wrk(url, probe, pid=pid, seconds=2, connections=connections)
                            acknowledged[name] += probed.acknowledged
                            first = probed.first_error
                        text = f"; first error: {first}" if first else ""
                        message = f"{name}, c={connections}, round {round_number}: {errors}{text}"
                        failures.append(message)
                        _loud("ERRORS " + message)
                        if first:
                            result = replace(result, first_error=first)
                    turns.setdefault((name, connections), []).append(result)
            print(f"round {round_number} of {args.rounds} done", file=sys.stderr, flush=True)
        servers.close()  # stop the servers before counting what they stored
        stored = {
            subject.target.name: _stored_sqlite(subject.sqlite_file)
            for subject in subjects
            if subject.sqlite_file is not None
        }
        if args.postgres is not None:
            orgs = {
                _org(s.kind, s.workers): s.target.name
                for s in subjects
                if s.writes and s.database == "PostgreSQL"
            }
            counted = asyncio.run(_stored_postgres(args.postgres, list(orgs)))
            stored.update({orgs[org_id]: count for org_id, count in counted.items()})

    names = [subject.target.name for subject in subjects]
    width = max(30, *(len(name) for name in names))
    # What each target is compared with: the ceiling at its worker count, and one tx per
    # request on its database at its worker count (the ceiling: on SQLite).
    ceiling_of = {s.target.name: _label(CEILING, "", s.workers) for s in subjects}
    single_of = {s.target.name: _label(SINGLE, s.database or "SQLite", s.workers) for s in subjects}
    pairs = [  # (group commit, ceiling, one tx per request) per database and worker count
        (s.target.name, ceiling_of[s.target.name], single_of[s.target.name])
        for s in subjects
        if s.kind == GROUP
    ]
    results = {turn: _median(runs) for turn, runs in turns.items()}
    header = (
        f"{'target':{width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} "
        f"{'/ceiling':>9} {'/one-tx':>8} {'errors':>7}"
    )
    for connections in concurrencies:
        print(f"\nconcurrency {connections} (medians of {args.rounds} rounds; req/s = events/s)")
        print(header)
        for name in names:
            result = results[(name, connections)]
            ceiling_rate = results[(ceiling_of[name], connections)].requests_per_second
            single_rate = results[(single_of[name], connections)].requests_per_second
            print(
                f"{name:{width}} {result.requests_per_second:9.0f} {result.p50_ms:8.2f} "
                f"{result.p99_ms:8.2f} {result.cpu_ms_per_request:10.3f} "
                f"{_ratio(result.requests_per_second, ceiling_rate):9.2f} "
                f"{_ratio(result.requests_per_second, single_rate):8.2f} {result.errors:7d}"
            )

    print()
    for number in range(args.rounds):
        for group_name, ceiling_name, single_name in pairs:
            cells = []
            for connections in concurrencies:
                group, ceiling, single = (
                    turns[(name, connections)][number].requests_per_second
                    for name in (group_name, ceiling_name, single_name)
                )
                cells.append(
                    f"c={connections} group/ceiling {_ratio(group, ceiling):.2f}, "
                    f"group/one-tx {_ratio(group, single):.2f}"
                )
            print(f"round {number + 1}, {group_name}: " + "; ".join(cells))

    top = max(concurrencies)
    print()
    for group_name, ceiling_name, single_name in pairs:
        top_group = results[(group_name, top)]
        top_ceiling = results[(ceiling_name, top)].requests_per_second
        top_single = results[(single_name, top)].requests_per_second
        print(
            f"at c={top}, {group_name}: / ceiling "
            f"{_ratio(top_group.requests_per_second, top_ceiling):.2f}"
            " (target >= 0.30); / one-tx-per-request "
            f"{_ratio(top_group.requests_per_second, top_single):.2f}x"
            f" (target >= 3x); p99 {top_group.p99_ms:.1f} ms (target < 50 ms)"
            + ("" if top == 64 else "  [the targets are stated for c=64]")
        )

    print()
    lost = False
    for name, count in stored.items():
        verdict = "ok" if count >= acknowledged[name] else "MISSING EVENTS"
        lost = lost or count < acknowledged[name]
        print(
            f"{name:{width}} {count:9,} events stored >= {acknowledged[name]:9,} 2xx answers "
            f"(warm-ups included): {verdict}"
        )
    if failures or lost:
        _loud(
            f"THIS RUN HAD ERRORS: {len(failures)} turn(s) with non-2xx answers or socket "
            f"errors{', and acknowledged events missing from a database' if lost else ''}"
        )
        for failure in failures:
            print("  " + failure, file=sys.stderr)
        raise SystemExit(1)
    print("no errors: every answer was 2xx, every acknowledged event is stored")


if __name__ == "__main__":
    main()
