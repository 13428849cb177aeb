"""Single-event POST throughput and latency, group commit against one transaction per request.

    python -m bench.writes [--seconds 5] [--rounds 3] [--connections 1,16,64]

Three servers run under uvicorn with one worker on 127.0.0.1: the gateway with group commit
(the default), the gateway with EVENTS_GATEWAY_GROUP_COMMIT=0 (one transaction per request),
each on its own new SQLite file with the gateway's settings (WAL, synchronous=FULL), and the
constant-JSON Starlette endpoint of bench/http_apps.py as the ceiling (a GET: it takes no
body). wrk (Debian package `wrk`) POSTs one event per request to
`/orgs/{org_id}/containers/{container_id}/events`, cycling over a list of containers, at each
concurrency (wrk connections); every answer comes after its event is committed, so req/s is
events/s durably stored. The targets take turns for several rounds, so a burst of noise on
this shared machine lands on every target alike. Printed per concurrency: the median over
rounds of req/s, p50 and p99 latency, the server's CPU ms per request, and the ratios to the
ceiling and to one transaction per request; then each round's ratios, the headline ratios
at the highest concurrency, and each database's event count against the 2xx answers wrk
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

from bench.http import Target, cpu_seconds, read_wrk, serving
from bench.ingest import create_database

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
    """A target, with its database (None for the ceiling) and its settings."""

    target: Target
    database: Path | None
    env: dict[str, str]


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


def _post_script(key: str, script: Path, *, capture_errors: bool = False) -> Path:
    """POST one event per request, cycling over the containers; requests are built once.

    With capture_errors, the first answer with status >= 400 in each thread is printed at the
    end as `FIRST-ERROR status body` (a `response` callback costs wrk time, so it is kept out
    of the measured runs)."""
    paths = [f"/orgs/{ORG_ID}/containers/vault-{number:03d}/events" for number in range(CONTAINERS)]
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


def _stored(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM events").fetchone()[0])


def _subjects(scratch: Path) -> tuple[list[Subject], dict[str, str]]:
    """The three targets, each gateway on a new database; and each target's API key."""
    path = f"/orgs/{ORG_ID}/containers/vault-000/events"  # wrk's URL; the script sets paths
    subjects = [Subject(Target(CEILING, "bench.http_apps:ceiling", False, "/"), None, {})]
    keys = {CEILING: ""}
    for name, group_commit in ((GROUP, "1"), (SINGLE, "0")):
        directory = scratch / ("group-commit" if group_commit == "1" else "one-tx")
        directory.mkdir()
        database = directory / "events.db"
        keys[name] = asyncio.run(create_database(database, ORG_ID))
        env = {
            "EVENTS_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "EVENTS_GATEWAY_GROUP_COMMIT": group_commit,
        }
        target = Target(name, "gateway.app:create_app", True, path, authenticated=True)
        subjects.append(Subject(target, database, env))
    return subjects, keys


def _loud(message: str) -> None:
    print(f"\n{'!' * 78}\n!!! {message}\n{'!' * 78}", file=sys.stderr, flush=True)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writes", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns per target")
    parser.add_argument(
        "--connections", default="1,16,64", help="comma-separated wrk concurrencies"
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
        concurrencies = [int(item) for item in args.connections.split(",") if item.strip()]
    except ValueError:
        parser.error(f"--connections must be integers separated by commas: {args.connections}")
    if not concurrencies or min(concurrencies) < 1:
        parser.error("--connections needs at least one concurrency, each >= 1")

    turns: dict[tuple[str, int], list[Run]] = {}
    acknowledged: dict[str, int] = {}  # 2xx answers wrk counted, warm-ups and probes included
    failures: list[str] = []
    with (
        tempfile.TemporaryDirectory(dir=args.directory, prefix="bench-writes-") as scratch,
        ExitStack() as servers,
    ):
        subjects, keys = _subjects(Path(scratch))
        print(
            f"single-event POSTs over {CONTAINERS} containers, one org; new SQLite files in "
            f"{scratch}; wrk -t1 -c{{{args.connections}}} -d{args.seconds}s "
            f"(after a {WARM_UP_SECONDS}s warm-up) per turn, {args.rounds} rounds, "
            "uvicorn 1 worker",
            flush=True,
        )
        running = []
        for number, subject in enumerate(subjects):
            env = {**os.environ, **subject.env}
            base, pid = servers.enter_context(serving(subject.target, env))
            name = subject.target.name
            script = None
            probe = None
            if subject.database is not None:
                script = _post_script(keys[name], Path(scratch) / f"target-{number}.lua")
                probe = _post_script(
                    keys[name], Path(scratch) / f"probe-{number}.lua", capture_errors=True
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
            subject.target.name: _stored(subject.database)
            for subject in subjects
            if subject.database is not None
        }

    names = [subject.target.name for subject in subjects]
    results = {turn: _median(runs) for turn, runs in turns.items()}
    header = (
        f"{'target':30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} "
        f"{'/ceiling':>9} {'/one-tx':>8} {'errors':>7}"
    )
    for connections in concurrencies:
        ceiling = results[(CEILING, connections)].requests_per_second
        single = results[(SINGLE, connections)].requests_per_second
        print(f"\nconcurrency {connections} (medians of {args.rounds} rounds; req/s = events/s)")
        print(header)
        for name in names:
            result = results[(name, connections)]
            print(
                f"{name:30} {result.requests_per_second:9.0f} {result.p50_ms:8.2f} "
                f"{result.p99_ms:8.2f} {result.cpu_ms_per_request:10.3f} "
                f"{_ratio(result.requests_per_second, ceiling):9.2f} "
                f"{_ratio(result.requests_per_second, single):8.2f} {result.errors:7d}"
            )

    print()
    for number in range(args.rounds):
        cells = []
        for connections in concurrencies:
            rates = {name: turns[(name, connections)][number].requests_per_second for name in names}
            cells.append(
                f"c={connections} group/ceiling {_ratio(rates[GROUP], rates[CEILING]):.2f}, "
                f"group/one-tx {_ratio(rates[GROUP], rates[SINGLE]):.2f}"
            )
        print(f"round {number + 1}: " + "; ".join(cells))

    top = max(concurrencies)
    group = results[(GROUP, top)]
    print(
        f"\nat c={top}: group commit / ceiling "
        f"{_ratio(group.requests_per_second, results[(CEILING, top)].requests_per_second):.2f}"
        " (target >= 0.30); group commit / one-tx-per-request "
        f"{_ratio(group.requests_per_second, results[(SINGLE, top)].requests_per_second):.2f}x"
        f" (target >= 3x); group commit p99 {group.p99_ms:.1f} ms (target < 50 ms)"
        + ("" if top == 64 else "  [the targets are stated for c=64]")
    )

    print()
    lost = False
    for name, count in stored.items():
        verdict = "ok" if count >= acknowledged[name] else "MISSING EVENTS"
        lost = lost or count < acknowledged[name]
        print(
            f"{name:30} {count:9,} events stored >= {acknowledged[name]:9,} 2xx answers "
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
