"""HTTP throughput and latency of a 100-event page, against a ceiling and a floor, in one run.

    python -m bench.http [--events 100000] [--seconds 10] [--connections 16]

Each server runs alone under uvicorn with one worker on 127.0.0.1; wrk (Debian package
`wrk`) is the load generator. Printed per target: requests/s, p50 and p99 latency, and the
ratio of its requests/s to the constant-JSON ceiling and to the raw-driver floor.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.load import default_database_path, key_path, load, read_manifest

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


def targets(org_id: str) -> list[Target]:
    gateway_query = f'{{ org(id: "{org_id}") {{ events(first: 100) {{ nodes {{ {FIELDS} }} }} }} }}'
    baseline_query = f'{{ org(id: "{org_id}") {{ events(first: 100) {{ {FIELDS} }} }} }}'
    return [
        Target("ceiling: constant JSON", "bench.http_apps:ceiling", False, "/"),
        Target("floor: raw aiosqlite + orjson", "bench.http_apps:raw_driver", False, "/"),
        Target(
            "REST shim page",
            "gateway.app:create_app",
            True,
            f"/orgs/{org_id}/events?limit=100",
            authenticated=True,
        ),
        Target(
            "GraphQL, gateway",
            "gateway.app:create_app",
            True,
            "/graphql",
            graphql=gateway_query,
            authenticated=True,
        ),
        Target(
            "GraphQL, default Strawberry",
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
    peak_rss_mib: float = 0.0


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(target: Target, env: dict[str, str]) -> Iterator[tuple[str, int]]:
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
        "1",
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


def _wrk_script(target: Target, key: str, directory: Path) -> Path:
    headers = {"Authorization": f"Bearer {key}"} if target.authenticated else {}
    lines = [
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()
    ]
    if target.graphql is not None:
        lines += [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f"wrk.body = {json.dumps(json.dumps({'query': target.graphql}))}",
        ]
    script = directory / "target.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def _milliseconds(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(f"unknown latency {text!r}")


def measure(url: str, script: Path, *, seconds: int, connections: int) -> Result:
    subprocess.run(  # warm-up: caches, connections, the first compile of each statement
        ["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url],
        check=True,
        capture_output=True,
    )
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rate = p50 = p99 = None
    errors = 0
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rate = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = _milliseconds(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _milliseconds(parts[1])
        elif "Non-2xx or 3xx responses:" in line:
            errors = int(parts[-1])
    if rate is None or p50 is None or p99 is None:
        raise RuntimeError("could not read wrk's output:\n" + output)
    return Result(rate, p50, p99, errors)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="database size to read")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per target")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")

    database = default_database_path(args.events)
    manifest = read_manifest(database) or load(database, args.events, replace=True)
    key = key_path(database).read_text().strip()
    env = {
        **os.environ,
        "EVENTS_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "BENCH_DATABASE": str(database),
        "BENCH_ORG": manifest.org_id,
    }
    print(
        f"{args.events:,} events, org {manifest.org_id!r} holds {manifest.org_events:,}; "
        f"wrk -t1 -c{args.connections} -d{args.seconds}s per target, uvicorn 1 worker"
    )
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for target in targets(manifest.org_id):
            with serving(target, env) as (base, pid):
                script = _wrk_script(target, key, Path(scratch))
                result = measure(
                    base + target.path, script, seconds=args.seconds, connections=args.connections
                )
                results[target.name] = replace(result, peak_rss_mib=peak_rss_mib(pid))
    ceiling = results["ceiling: constant JSON"].requests_per_second
    floor = results["floor: raw aiosqlite + orjson"].requests_per_second
    header = f"{'target':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'/ceiling':>9} {'/floor':>7}"
    print(f"\n{header} {'peak RSS MiB':>12} errors")
    for name, result in results.items():
        print(
            f"{name:32} {result.requests_per_second:9.0f} {result.p50_ms:8.2f} "
            f"{result.p99_ms:8.2f} {result.requests_per_second / ceiling:9.2f} "
            f"{result.requests_per_second / floor:7.2f} {result.peak_rss_mib:12.1f} {result.errors}"
        )
    rest = results["REST shim page"].requests_per_second
    graphql = results["GraphQL, gateway"].requests_per_second
    baseline = results["GraphQL, default Strawberry"].requests_per_second
    print(
        f"\nREST / floor {rest / floor:.2f} (target >= 0.60); GraphQL / REST {graphql / rest:.2f} "
        f"(target >= 0.30); GraphQL / default Strawberry {graphql / baseline:.1f}x (target >= 3)"
    )


if __name__ == "__main__":
    main()
