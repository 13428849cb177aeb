"""HTTP throughput and latency of a 100-event page, against a ceiling and a floor, in one run.

    python -m bench.http [--events 100000] [--database-url URL] [--workers 1,2]
                         [--seconds 5] [--rounds 3] [--connections 16]

Every server runs under uvicorn on 127.0.0.1, with one worker or with each of the `--workers`
counts in turn, on a bench.load database (SQLite or PostgreSQL), and wrk (Debian package `wrk`)
loads one of them at a time while the others sit idle. The targets take turns for several
rounds, so a burst of noise on this shared machine lands on every target alike rather than on
whichever ran during it. Printed per target: the median over rounds of requests/s, p50 and p99
latency, and the ratio of its requests/s to the constant-JSON ceiling and to the raw-driver
floor at the same worker count; then each round's ratios, to show how much they move.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.load import (
    Manifest,
    default_database_path,
    is_postgres,
    key_path,
    load,
    postgres_stand_in,
    read_manifest,
    read_postgres_manifest,
    sqlite_path,
)

ROOT = Path(__file__).resolve().parent.parent
FIELDS = "id containerId eventType status timestamp receivedAt actor details"


@dataclass(frozen=True)
class Target:
    name: str
    app: str  # uvicorn's import string
    factory: bool
    path: str
    graphql: str | None = None  # a POSTed GraphQL query, else a GET
    authenticated: bool = False
    operation_name: str | None = None  # sent with the query when given (bench.graphql)
    variables: Mapping[str, object] | None = None


def graphql_body(target: Target) -> dict[str, object]:
    """The JSON body POSTed for a GraphQL target."""
    body: dict[str, object] = {"query": target.graphql}
    if target.operation_name is not None:
        body["operationName"] = target.operation_name
    if target.variables is not None:
        body["variables"] = dict(target.variables)
    return body


CEILING, FLOOR = "ceiling: constant JSON", "floor: raw driver + orjson"
REST, GRAPHQL, BASELINE = "REST shim page", "GraphQL, gateway", "GraphQL, default Strawberry"


def targets(org_id: str) -> list[Target]:
    gateway_query = f'{{ org(id: "{org_id}") {{ events(first: 100) {{ nodes {{ {FIELDS} }} }} }} }}'
    baseline_query = f'{{ org(id: "{org_id}") {{ events(first: 100) {{ {FIELDS} }} }} }}'
    return [
        Target(CEILING, "bench.http_apps:ceiling", False, "/"),
        Target(FLOOR, "bench.http_apps:raw_driver", False, "/"),
        Target(
            REST,
            "gateway.app:create_app",
            True,
            f"/orgs/{org_id}/events?limit=100",
            authenticated=True,
        ),
        Target(
            GRAPHQL,
            "gateway.app:create_app",
            True,
            "/graphql",
            graphql=gateway_query,
            authenticated=True,
        ),
        Target(
            BASELINE,
            "bench.http_apps:default_strawberry",
            False,
            "/graphql",
            graphql=baseline_query,
        ),
    ]


@dataclass(frozen=True)
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # The server's own CPU time (all its threads) per answered request: unlike requests/s,
    # it barely moves when another process takes a core.
    cpu_ms_per_request: float = 0.0
    peak_rss_mib: float = 0.0


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's master and its workers)."""
    found = [pid]
    for member in found:
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                found += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue  # the thread or process ended meanwhile
    return found


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory so far (Linux VmHWM) of the process and its descendants,
    added up: with several uvicorn workers, what the server holds at its peak at most."""
    total = 0.0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:"))
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process and its live descendants have used so far, all
    threads included: a server's master and its uvicorn workers together."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(target: Target, env: dict[str, str], *, workers: int = 1) -> Iterator[tuple[str, int]]:
    """Run the target under uvicorn with `workers` processes; yields its URL and the master's
    pid (cpu_seconds and peak_rss_mib count its workers too)."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        target.app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if target.factory:
        command.append("--factory")
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=1)  # noqa: S310 (loopback only)
                break
            except urllib.error.HTTPError:
                break  # it answers, if only with an error status
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{target.name} did not start") from None
                time.sleep(0.1)
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wrk_script(target: Target, key: str, script: Path) -> Path:
    headers = {"Authorization": f"Bearer {key}"} if target.authenticated else {}
    lines = [
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()
    ]
    if target.graphql is not None:
        lines += [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f"wrk.body = {json.dumps(json.dumps(graphql_body(target)))}",
        ]
    script.write_text("\n".join(lines) + "\n")
    return script


def _milliseconds(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(f"unknown latency {text!r}")


@dataclass(frozen=True)
class WrkReport:
    """What one wrk run printed (run with --latency)."""

    requests: int  # answers received, whatever their status
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # wrk's "Non-2xx or 3xx responses" (in fact status >= 400)
    socket_errors: dict[str, int]  # connect, read, write, timeout
    first_error: str | None  # a script's "FIRST-ERROR ..." line, if it printed one


def read_wrk(output: str) -> WrkReport:
    requests = rate = p50 = p99 = None
    non_2xx = 0
    socket_errors: dict[str, int] = {}
    first_error = None
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rate = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = _milliseconds(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _milliseconds(parts[1])
        elif parts[1:3] == ["requests", "in"]:
            requests = int(parts[0])
        elif "Non-2xx or 3xx responses:" in line:
            non_2xx = int(parts[-1])
        elif line.strip().startswith("Socket errors:"):
            for item in line.split(":", 1)[1].split(","):
                name, count = item.split()
                socket_errors[name] = int(count)
        elif line.startswith("FIRST-ERROR ") and first_error is None:
            first_error = line.removeprefix("FIRST-ERROR ")
    if requests is None or rate is None or p50 is None or p99 is None:
        raise RuntimeError("could not read wrk's output:\n" + output)
    return WrkReport(requests, rate, p50, p99, non_2xx, socket_errors, first_error)


def measure(url: str, script: Path, *, pid: int, seconds: int, connections: int) -> Result:
    subprocess.run(  # warm-up: caches, connections, the first compile of each statement
        ["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url],
        check=True,
        capture_output=True,
    )
    cpu_before = cpu_seconds(pid)
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    report = read_wrk(output)
    rate = report.requests_per_second
    return Result(rate, report.p50_ms, report.p99_ms, report.non_2xx, cpu * 1000 / (rate * seconds))


def _median(results: Sequence[Result]) -> Result:
    return Result(
        requests_per_second=statistics.median(r.requests_per_second for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
        cpu_ms_per_request=statistics.median(r.cpu_ms_per_request for r in results),
        peak_rss_mib=max(r.peak_rss_mib for r in results),
    )


def _ratios(rates: dict[str, float]) -> str:
    return (
        f"REST / floor {rates[REST] / rates[FLOOR]:.2f}; GraphQL / REST "
        f"{rates[GRAPHQL] / rates[REST]:.2f}; GraphQL / default Strawberry "
        f"{rates[GRAPHQL] / rates[BASELINE]:.1f}x"
    )


def _workers(count: int) -> str:
    return f"{count} worker{'s' if count > 1 else ''}"


def _label(name: str, workers: int) -> str:
    return f"{name}, {_workers(workers)}"


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not integers separated by commas: {text}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("at least one worker count, each >= 1")
    return counts


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """--events and --database-url, which _read_database reads."""
    parser.add_argument("--events", type=int, default=100_000, help="database size to read")
    parser.add_argument(
        "--database-url",
        help="a bench.load database: SQLite (default: sqlite:///bench/data/events-N.db) or "
        "PostgreSQL (postgresql+asyncpg://...)",
    )


def _read_database(
    parser: argparse.ArgumentParser, database_url: str | None, events: int
) -> tuple[str, Manifest, str]:
    """The gateway's URL of the bench.load database to read, its manifest and the bench
    org's key; the default SQLite file is loaded when missing."""
    if database_url is None:
        database = default_database_path(events)
        manifest = read_manifest(database) or load(database, events, replace=True)
    elif is_postgres(database_url):
        found = read_postgres_manifest(database_url)
        if found is None:
            parser.error(f"load it first: python -m bench.load --database-url {database_url}")
        key = key_path(postgres_stand_in(database_url)).read_text().strip()
        return database_url, found, key
    else:
        database = sqlite_path(database_url)
        found = read_manifest(database)
        if found is None:
            parser.error(f"{database} is not a database made by bench.load")
        manifest = found
    key = key_path(database).read_text().strip()
    return f"sqlite+aiosqlite:///{database}", manifest, key


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    add_database_arguments(parser)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns per target")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default=[1],
        help="comma-separated uvicorn worker counts, each target run at each (default 1)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")

    database_url, manifest, key = _read_database(parser, args.database_url, args.events)
    env = {
        **os.environ,
        "EVENTS_GATEWAY_DATABASE_URL": database_url,
        "BENCH_DATABASE_URL": database_url,
        "BENCH_ORG": manifest.org_id,
    }
    dialect = "PostgreSQL" if is_postgres(database_url) else "SQLite"
    print(
        f"{dialect}: {manifest.events:,} events, org {manifest.org_id!r} holds "
        f"{manifest.org_events:,}; wrk -t1 -c{args.connections} -d{args.seconds}s per turn, "
        f"{args.rounds} rounds, uvicorn {','.join(map(str, args.workers))} worker(s)"
    )
    turns: dict[tuple[str, int], list[Result]] = {}
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as servers:
        running = []
        for workers in args.workers:
            for number, target in enumerate(targets(manifest.org_id)):
                base, pid = servers.enter_context(serving(target, env, workers=workers))
                script = Path(scratch) / f"target-{workers}-{number}.lua"
                running.append((target, workers, base, pid, _wrk_script(target, key, script)))
        for _round in range(args.rounds):
            for target, workers, base, pid, script in running:
                result = measure(
                    base + target.path,
                    script,
                    pid=pid,
                    seconds=args.seconds,
                    connections=args.connections,
                )
                turns.setdefault((target.name, workers), []).append(
                    replace(result, peak_rss_mib=peak_rss_mib(pid))
                )
    results = {turn: _median(taken) for turn, taken in turns.items()}
    width = max(32, *(len(_label(name, workers)) for name, workers in results))
    header = (
        f"{'target':{width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'/ceiling':>9} {'/floor':>7}"
    )
    print(f"\n{header} {'CPU ms/req':>10} {'peak RSS MiB':>12} errors")
    for (name, workers), result in results.items():
        # Each server against the ceiling and the floor at its own worker count.
        ceiling = results[(CEILING, workers)].requests_per_second
        floor = results[(FLOOR, workers)].requests_per_second
        print(
            f"{_label(name, workers):{width}} {result.requests_per_second:9.0f} "
            f"{result.p50_ms:8.2f} {result.p99_ms:8.2f} "
            f"{result.requests_per_second / ceiling:9.2f} "
            f"{result.requests_per_second / floor:7.2f} {result.cpu_ms_per_request:10.3f} "
            f"{result.peak_rss_mib:12.1f} {result.errors}"
        )
    print()
    for workers in args.workers:
        for number in range(args.rounds):
            rates = {
                name: taken[number].requests_per_second
                for (name, count), taken in turns.items()
                if count == workers
            }
            print(f"round {number + 1}, {_workers(workers)}: {_ratios(rates)}")
        medians = {
            name: result.requests_per_second
            for (name, count), result in results.items()
            if count == workers
        }
        print(
            f"medians, {_workers(workers)}: {_ratios(medians)} (targets: >= 0.60, >= 0.30, >= 3x)"
        )


if __name__ == "__main__":
    main()
